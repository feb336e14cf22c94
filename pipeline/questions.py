"""Which questions each video gets: the config's `questions` (every video) and/or a `questions_file`.

A questions file is Parquet or JSONL (CSV also works) with columns `video_uri` and `question`, one row
per (video, question), questions kept in file order. Its video_uri may be a full URI or a path relative
to input.uri (a folder or prefix), e.g. `clip.mp4`; both are matched against the listing in canonical form.

With only a questions file, listed videos it does not mention are skipped (counted, not errors), and
videos it names that the listing did not find become error rows (stage "list"), so nothing it asks
about is silently lost. An entry that resolves outside the input location (`../x.mp4`, another
scheme, an absolute path elsewhere) and outside input.allowed_prefixes is an error row of type
PathOutsideInput naming the entry: questions never make the job read anything the listing did not find.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import LISTED, PLANNED
from pipeline.storage import PathOutsideInput, is_within, normalize_uri, read_table_file


def read_questions_file(uri: str, storage_options: Optional[Mapping[str, Any]] = None) -> pa.Table:
    """The (video_uri, question) table of a Parquet, JSONL or CSV file, with a clear error if malformed."""
    try:
        table = read_table_file(uri, storage_options)
    except ValueError as exc:
        raise ValueError(f"questions_file {exc}") from None
    missing = {"video_uri", "question"} - set(table.column_names)
    if missing:
        raise ValueError(f"questions_file {uri}: missing column(s) {sorted(missing)}, has {table.column_names}")
    ranged = [c for c in ("start_s", "end_s") if c in table.column_names]
    if len(ranged) == 1:
        raise ValueError(f"questions_file {uri}: has {ranged[0]} without {({'start_s', 'end_s'} - set(ranged)).pop()}")
    if ranged:
        table = table.set_column(table.schema.get_field_index("start_s"), "start_s", pc.cast(table.column("start_s"), pa.float64()))
        table = table.set_column(table.schema.get_field_index("end_s"), "end_s", pc.cast(table.column("end_s"), pa.float64()))
        for n, (start, end) in enumerate(zip(table.column("start_s").to_pylist(), table.column("end_s").to_pylist()), 1):
            if (start is None) != (end is None) or (start is not None and not 0 <= start < end):
                raise ValueError(f"questions_file {uri}, row {n}: start_s and end_s must both be set with "
                                 f"0 <= start_s < end_s, or both empty; got {start!r}, {end!r}")
    return table.select(["video_uri", "question", *ranged, *(["answer"] if "answer" in table.column_names else [])])


def label_key(video_uri: str, question: str, start_s: Optional[float] = None, end_s: Optional[float] = None) -> str:
    """The key of one (video, question) in `expected_answers`: the canonical URI and the question, and the
    time range of a questions-file row that names one (the same question may have another label elsewhere)."""
    key = f"{normalize_uri(video_uri)}\x00{question}"
    return key if start_s is None else f"{key}\x00{start_s!r}\x00{end_s!r}"


def _ranges(table: pa.Table) -> tuple[list, list]:
    if "start_s" in table.column_names:
        return table.column("start_s").to_pylist(), table.column("end_s").to_pylist()
    return [None] * table.num_rows, [None] * table.num_rows


def segment_questions(
    questions: Sequence[str], starts: Optional[Sequence], ends: Optional[Sequence], start_s: float, end_s: Optional[float]
) -> tuple[list[str], list, list]:
    """The questions of one segment [start_s, end_s) (end None: to the end of the video), parallel lists
    (questions, starts, ends): unranged questions, and ranged ones whose range overlaps the segment. A
    question asked over several ranges is asked once, under the range that overlaps the segment most (its
    label then labels the answer)."""
    end = float("inf") if end_s is None else end_s
    starts = starts or [None] * len(questions)
    ends = ends or [None] * len(questions)
    best: dict[str, tuple[float, Optional[float], Optional[float]]] = {}
    for question, qs, qe in zip(questions, starts, ends):
        overlap = float("inf") if qs is None else min(end, qe) - max(start_s, qs)
        if overlap > 0 and (question not in best or overlap > best[question][0]):
            best[question] = (overlap, qs, qe)
    kept = [q for q in dict.fromkeys(questions) if q in best]
    return kept, [best[q][1] for q in kept], [best[q][2] for q in kept]


def whole_videos(listed: pa.Table) -> pa.Table:
    """LISTED -> PLANNED without planning (sampling.segments.mode none): each video is segment 0 from 0 s,
    its end (the duration) filled in by decoding; ranged questions are asked once each."""
    n = listed.num_rows
    if pc.sum(pc.list_value_length(pc.fill_null(listed.column("question_start_s"), pa.scalar([], pa.list_(pa.float64()))))).as_py():
        rows = [segment_questions(r["questions"] or [], r["question_start_s"], r["question_end_s"], 0.0, None)
                for r in listed.select(["questions", "question_start_s", "question_end_s"]).to_pylist()]
        for name, i in (("questions", 0), ("question_start_s", 1), ("question_end_s", 2)):
            listed = listed.set_column(listed.schema.get_field_index(name), LISTED.field(name),
                                       pa.array([r[i] for r in rows], LISTED.field(name).type))
    return pa.Table.from_arrays(
        [*listed.columns, pa.array(np.zeros(n, np.int32)), pa.array(np.zeros(n)), pa.nulls(n, pa.float64())],
        schema=PLANNED,
    )


def expected_answers(table: pa.Table, input_uri: str) -> dict[str, str]:
    """{label_key: answer} from a questions table's `answer` column (empty without one); rows with a null
    or empty answer are unlabelled. A label that is not a string (e.g. a number) is taken as its text."""
    if "answer" not in table.column_names:
        return {}
    base = _base_of(input_uri)
    out: dict[str, str] = {}
    columns = (table.column(c).to_pylist() for c in ("video_uri", "question", "answer"))
    for (uri, question, answer), start, end in zip(zip(*columns), *_ranges(table)):
        if not uri or not question or answer is None or str(answer).strip() == "":
            continue
        uri = str(uri)
        full = uri if ("://" in uri or uri.startswith("/")) else f"{base}/{uri}"
        out[label_key(full, str(question), start, end)] = str(answer)
    return out


def _base_of(input_uri: str) -> str:
    """Where relative video_uri entries live: input.uri itself for a folder/prefix, else its parent."""
    last = input_uri.rstrip("/").rsplit("/", 1)[-1]
    if any(c in input_uri for c in "*?[") or "." in last:
        return input_uri.rstrip("/").rsplit("/", 1)[0]
    return input_uri.rstrip("/")


def ranged_questions_by_video(table: pa.Table, input_uri: str) -> dict[str, list[tuple[str, Optional[float], Optional[float]]]]:
    """{canonical video URI: [(question, start_s, end_s) in file order]} from a questions table (the range
    None when the row names none)."""
    base = _base_of(input_uri)
    out: dict[str, list] = {}
    pairs = zip(table.column("video_uri").to_pylist(), table.column("question").to_pylist())
    for (uri, question), start, end in zip(pairs, *_ranges(table)):
        if not uri or not question or not str(question).strip():
            continue
        uri = str(uri)
        full = uri if ("://" in uri or uri.startswith("/")) else f"{base}/{uri}"
        out.setdefault(normalize_uri(full), []).append((str(question), start, end))
    return out


def questions_by_video(table: pa.Table, input_uri: str) -> dict[str, list[str]]:
    """{canonical video URI: [questions in file order]} from a questions table (ranges left out)."""
    return {uri: [q for q, _, _ in entries] for uri, entries in ranged_questions_by_video(table, input_uri).items()}


def repeat_list(values: Sequence[str], n: int) -> pa.ListArray:
    """n copies of one list of strings as an Arrow list column, built without a Python object per row."""
    k = len(values)
    flat = pa.array(list(values), pa.string()).take(np.tile(np.arange(k, dtype=np.int64), n)) if k else pa.array([], pa.string())
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * k), flat)


def attach_questions(
    listed: pa.Table, common: Sequence[str], per_video: Optional[dict[str, list[str]]],
    input_uri: Optional[str] = None, allowed_prefixes: Sequence[str] = (),
) -> tuple[pa.Table, int]:
    """Fill the `questions` column of a LISTED table; returns (table, videos skipped for want of questions).

    Every video gets `common` first, then its own questions from the file (duplicates dropped). Without a
    questions file the column is built in Arrow (one list repeated); with one, batch by batch. per_video's
    entries are questions or (question, start_s, end_s) (ranged_questions_by_video), whose ranges fill
    question_start_s / question_end_s.
    """
    common = list(dict.fromkeys(common))
    per_video = None if per_video is None else {
        k: [e if isinstance(e, tuple) else (e, None, None) for e in v] for k, v in per_video.items()}
    if not per_video:
        if common:
            return listed.set_column(listed.schema.get_field_index("questions"), LISTED.field("questions"),
                                     repeat_list(common, listed.num_rows)), 0
        failed = pc.is_valid(listed.column("error"))  # nothing to ask: only error rows stay
        kept = listed.filter(failed)
        kept = kept.set_column(kept.schema.get_field_index("questions"), LISTED.field("questions"), repeat_list([], kept.num_rows))
        return kept, listed.num_rows - kept.num_rows
    batches, skipped = [], 0
    seen: set[str] = set()  # bounded by the questions file, not by the listing
    for batch in listed.to_batches(max_chunksize=65_536):
        uris, errors = batch.column(0).to_pylist(), batch.column("error").to_pylist()
        keep, questions = [], []
        for i, (uri, error) in enumerate(zip(uris, errors)):
            key = normalize_uri(uri)
            own = per_video.get(key)
            if own is not None:
                seen.add(key)
            asked = list(dict.fromkeys([*((q, None, None) for q in common), *(own or [])]))
            if not asked and error is None:
                skipped += 1
                continue
            keep.append(i)
            questions.append(asked)
        table = pa.Table.from_batches([batch]).take(keep)
        for name, part in (("questions", 0), ("question_start_s", 1), ("question_end_s", 2)):
            values = [[e[part] for e in asked] for asked in questions]
            if part and not any(e[part] is not None for asked in questions for e in asked):
                values = [None] * len(questions)  # no ranges: null lists, as without a questions file
            table = table.set_column(table.schema.get_field_index(name), LISTED.field(name), pa.array(values, LISTED.field(name).type))
        batches.append(table)
    rows = []
    for key in sorted(set(per_video) - seen):
        error_type, error = "FileNotFoundError", "named in questions_file but not found by the listing of input.uri"
        if input_uri is not None and not is_within(key, (_base_of(input_uri), *allowed_prefixes)):
            outside = PathOutsideInput.entry("questions_file", key, _base_of(input_uri))
            error_type, error = type(outside).__name__, str(outside)
        rows.append({**dict.fromkeys(LISTED.names), "video_uri": key, "questions": list(dict.fromkeys(q for q, _, _ in per_video[key])),
                     "error_stage": "list", "error_type": error_type, "error": error})
    return pa.concat_tables([*batches, pa.Table.from_pylist(rows, schema=LISTED)]), skipped
