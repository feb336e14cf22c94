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

from pipeline.schema import LISTED
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
    return table.select(["video_uri", "question", *(["answer"] if "answer" in table.column_names else [])])


def label_key(video_uri: str, question: str) -> str:
    """The key of one (video, question) in `expected_answers`: the canonical URI and the question."""
    return f"{normalize_uri(video_uri)}\x00{question}"


def expected_answers(table: pa.Table, input_uri: str) -> dict[str, str]:
    """{label_key: answer} from a questions table's `answer` column (empty without one); rows with a null
    or empty answer are unlabelled. A label that is not a string (e.g. a number) is taken as its text."""
    if "answer" not in table.column_names:
        return {}
    base = _base_of(input_uri)
    out: dict[str, str] = {}
    for uri, question, answer in zip(*(table.column(c).to_pylist() for c in ("video_uri", "question", "answer"))):
        if not uri or not question or answer is None or str(answer).strip() == "":
            continue
        uri = str(uri)
        full = uri if ("://" in uri or uri.startswith("/")) else f"{base}/{uri}"
        out[label_key(full, str(question))] = str(answer)
    return out


def _base_of(input_uri: str) -> str:
    """Where relative video_uri entries live: input.uri itself for a folder/prefix, else its parent."""
    last = input_uri.rstrip("/").rsplit("/", 1)[-1]
    if any(c in input_uri for c in "*?[") or "." in last:
        return input_uri.rstrip("/").rsplit("/", 1)[0]
    return input_uri.rstrip("/")


def questions_by_video(table: pa.Table, input_uri: str) -> dict[str, list[str]]:
    """{canonical video URI: [questions in file order]} from a questions table."""
    base = _base_of(input_uri)
    out: dict[str, list[str]] = {}
    for uri, question in zip(table.column("video_uri").to_pylist(), table.column("question").to_pylist()):
        if not uri or not question or not str(question).strip():
            continue
        uri = str(uri)
        full = uri if ("://" in uri or uri.startswith("/")) else f"{base}/{uri}"
        out.setdefault(normalize_uri(full), []).append(str(question))
    return out


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
    questions file the column is built in Arrow (one list repeated); with one, batch by batch.
    """
    common = list(dict.fromkeys(common))
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
            asked = list(dict.fromkeys([*common, *(own or [])]))
            if not asked and error is None:
                skipped += 1
                continue
            keep.append(i)
            questions.append(asked)
        table = pa.Table.from_batches([batch]).take(keep)
        batches.append(table.set_column(table.schema.get_field_index("questions"), LISTED.field("questions"),
                                        pa.array(questions, LISTED.field("questions").type)))
    rows = []
    for key in sorted(set(per_video) - seen):
        error_type, error = "FileNotFoundError", "named in questions_file but not found by the listing of input.uri"
        if input_uri is not None and not is_within(key, (_base_of(input_uri), *allowed_prefixes)):
            outside = PathOutsideInput.entry("questions_file", key, _base_of(input_uri))
            error_type, error = type(outside).__name__, str(outside)
        rows.append({**dict.fromkeys(LISTED.names), "video_uri": key, "questions": per_video[key],
                     "error_stage": "list", "error_type": error_type, "error": error})
    return pa.concat_tables([*batches, pa.Table.from_pylist(rows, schema=LISTED)]), skipped
