"""Which questions each video gets: the config's `questions` (every video) and/or a `questions_file`.

A questions file is Parquet or JSONL (CSV also works) with columns `video_uri` and `question`, one row
per (video, question), questions kept in file order, and optionally `answer`, the label, and `start_s` /
`end_s`: a row with a time range is asked only of the segments that overlap it, and labels their answers. Its video_uri may
be a full URI or a path relative to input.uri (a folder or prefix), e.g. `clip.mp4`; both are matched
against the listing in canonical form.

The file is read once, into one Arrow table (`read_questions`: QUESTIONS, canonical URIs); the listing
gets its questions by a join on video_uri (`attach_questions`), and the labels (`labels_of`) are joined
to the answers by the writer, after answering. Nothing here holds a Python object per video.

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

# A questions file as the pipeline holds it: canonical video URIs, each (video_uri, question) once, file order.
QUESTIONS = pa.schema([("video_uri", pa.string()), ("question", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()),
                       ("answer", pa.string())])  # start_s / end_s null: the whole video
LABELS = pa.schema([("video_uri", pa.string()), ("question", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()),
                    ("expected", pa.string())])

# A local path (after an optional file://) or an s3:// URI with no '.', '..' or empty segment and no trailing
# '/': already what normalize_uri makes of it, bar a local path's scheme. The rest goes through normalize_uri.
_CLEAN = r"^(?:(?:file://)?/|s3://[^/]+/)(?:[^/]+/)*[^/]+$"
_DOT_SEGMENT = r"(^|/)\.\.?(/|$)"


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
        start, end = table.column("start_s"), table.column("end_s")
        one_set = pc.not_equal(pc.is_valid(start), pc.is_valid(end))
        ordered = pc.and_(pc.greater_equal(start, 0.0), pc.less(start, end))  # null where either is null
        bad = pc.or_(one_set, pc.invert(pc.fill_null(ordered, True)))
        if pc.any(bad).as_py():  # checked in Arrow: a questions file may hold millions of rows
            n = int(pc.index(bad, True).as_py())
            raise ValueError(f"questions_file {uri}, row {n + 1}: start_s and end_s must both be set with "
                             f"0 <= start_s < end_s, or both empty; got {start[n].as_py()!r}, {end[n].as_py()!r}")
    return table.select(["video_uri", "question", *ranged, *(["answer"] if "answer" in table.column_names else [])])


def overlap_s(start_s: float, end_s: Optional[float], range_start: Optional[float], range_end: Optional[float]) -> float:
    """Seconds a question's range [range_start, range_end) shares with the segment [start_s, end_s) (end None: to
    the end of the video); an unranged question (range_start None) covers every segment: inf."""
    if range_start is None:
        return float("inf")
    return min(float("inf") if end_s is None else end_s, range_end) - max(start_s, range_start)


def segment_questions(
    questions: Sequence[str], starts: Optional[Sequence], ends: Optional[Sequence], start_s: float, end_s: Optional[float]
) -> tuple[list[str], list, list]:
    """The questions of one segment [start_s, end_s) (end None: to the end of the video), parallel lists
    (questions, starts, ends): unranged questions, and ranged ones whose range overlaps the segment. A
    question asked over several ranges is asked once, under the range that overlaps the segment most (its
    label then labels the answer)."""
    starts = starts or [None] * len(questions)
    ends = ends or [None] * len(questions)
    best: dict[str, tuple[float, Optional[float], Optional[float]]] = {}
    for question, qs, qe in zip(questions, starts, ends):
        overlap = overlap_s(start_s, end_s, qs, qe)
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


def base_of(input_uri: str) -> str:
    """Where relative video_uri entries live: input.uri itself for a folder/prefix, else its parent."""
    last = input_uri.rstrip("/").rsplit("/", 1)[-1]
    if any(c in input_uri for c in "*?[") or "." in last:
        return input_uri.rstrip("/").rsplit("/", 1)[0]
    return input_uri.rstrip("/")


def resolve_entry(uri: str, input_uri: str) -> str:
    """The canonical URI of a questions or labels file entry: a full URI or absolute path as it is, a
    relative one under base_of(input_uri)."""
    return normalize_uri(uri if ("://" in uri or uri.startswith("/")) else f"{base_of(input_uri)}/{uri}")


def canonical_uris(uris: pa.Array, input_uri: Optional[str] = None) -> pa.Array:
    """resolve_entry over a string column (relative entries only when input_uri is given), in Arrow for
    clean local paths and s3:// URIs, one by one for the rest."""
    uris = pc.cast(uris, pa.string())
    if isinstance(uris, pa.ChunkedArray):
        uris = uris.combine_chunks()
    if input_uri is not None:
        relative = pc.invert(pc.or_(pc.match_substring(uris, "://"), pc.starts_with(uris, "/")))
        base = normalize_uri(base_of(input_uri))
        uris = pc.if_else(relative, pc.binary_join_element_wise(base, uris, "/"), uris)
    clean = pc.and_(pc.match_substring_regex(uris, _CLEAN), pc.invert(pc.match_substring_regex(uris, _DOT_SEGMENT)))
    bare = pc.starts_with(uris, "/")  # a local path without its scheme
    fast = pc.if_else(bare, pc.binary_join_element_wise("file://", uris, ""), uris) if pc.any(bare).as_py() else uris
    slow = pc.invert(pc.fill_null(clean, False))
    if not pc.any(slow).as_py():
        return fast
    positions = pc.indices_nonzero(slow).to_numpy()
    merged = fast.to_numpy(zero_copy_only=False).astype(object)
    merged[positions] = [None if u is None else normalize_uri(u) for u in uris.take(positions).to_pylist()]
    return pa.array(merged, pa.string())


def questions_table(table: pa.Table, input_uri: str) -> pa.Table:
    """A questions file's table (read_questions_file) as QUESTIONS: canonical video URIs, rows without a
    video or a question dropped, each (video_uri, question) once (its first row), file order kept; an
    answer that is not a string (e.g. a count) is taken as its text, an empty one as no label. A row's time
range (start_s, end_s) is part of its key: one question may be asked, and labelled, over several ranges."""
    n = table.num_rows
    answer = table.column("answer") if "answer" in table.column_names else pa.nulls(n, pa.string())
    answer = pc.cast(answer, pa.string())
    ranged = "start_s" in table.column_names
    out = pa.table({
        "video_uri": canonical_uris(table.column("video_uri").combine_chunks(), input_uri),
        "question": pc.cast(table.column("question"), pa.string()),
        "start_s": table.column("start_s") if ranged else pa.nulls(n, pa.float64()),
        "end_s": table.column("end_s") if ranged else pa.nulls(n, pa.float64()),
        "answer": pc.if_else(pc.equal(pc.utf8_trim_whitespace(answer), ""), pa.scalar(None, pa.string()), answer),
    })
    asked = pc.and_(pc.is_valid(out.column("video_uri")), pc.invert(pc.equal(pc.utf8_trim_whitespace(out.column("question")), "")))
    out = out.filter(pc.fill_null(asked, False))
    # The first row of each (video_uri, question, range), found on dictionary codes (ints hash cheaper than strings).
    codes = pa.table({name: pc.dictionary_encode(out.column(name)).combine_chunks().indices for name in ("video_uri", "question")})
    keys = ["video_uri", "question"]
    if ranged:
        codes = codes.append_column("start_s", pc.fill_null(out.column("start_s"), -1.0)).append_column("end_s", pc.fill_null(out.column("end_s"), -1.0))
        keys += ["start_s", "end_s"]
    codes = codes.append_column("row", pa.array(np.arange(out.num_rows, dtype=np.int64)))
    first = codes.group_by(keys, use_threads=False).aggregate([("row", "min")]).column("row_min")
    out = out.take(np.sort(first.to_numpy()))
    pa.default_memory_pool().release_unused()  # give the intermediate buffers back: the driver stays small
    return out.select(QUESTIONS.names).cast(QUESTIONS)


def read_questions(uri: str, storage_options: Optional[Mapping[str, Any]], input_uri: str) -> pa.Table:
    """A questions file as QUESTIONS (read once; see questions_table)."""
    return questions_table(read_questions_file(uri, storage_options), input_uri)


def labels_of(questions: Optional[pa.Table]) -> Optional[pa.Table]:
    """The labelled rows of a QUESTIONS table as LABELS (video_uri, question, start_s, end_s, expected); None without any."""
    if questions is None:
        return None
    labelled = questions.filter(pc.is_valid(questions.column("answer")))
    if not labelled.num_rows:
        return None
    return labelled.rename_columns(LABELS.names).cast(LABELS)


def repeat_list(values: Sequence[str], n: int) -> pa.ListArray:
    """n copies of one list of strings as an Arrow list column, built without a Python object per row."""
    k = len(values)
    flat = pa.array(list(values), pa.string()).take(np.tile(np.arange(k, dtype=np.int64), n)) if k else pa.array([], pa.string())
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * k), flat)


def lists_by_row(rows: np.ndarray, values: pa.Array, n: int) -> pa.ListArray:
    """A list column of n rows from (row, value) pairs sorted by row: row i gets its values in order."""
    counts = np.bincount(rows, minlength=n) if len(rows) else np.zeros(n, dtype=np.int64)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def own_questions(questions: pa.Table, common: Sequence[str]) -> pa.Table:
    """The QUESTIONS rows a video is asked after the common ones: (video_uri, question, start_s, end_s,
    position), file order, the common questions left out, positions after theirs."""
    own = questions.select(["video_uri", "question", "start_s", "end_s"])
    if common:
        own = own.filter(pc.invert(pc.is_in(own.column("question"), pa.array(list(common), pa.string()))))
    k = len(common)
    return own.append_column("position", pa.array(np.arange(k, k + own.num_rows, dtype=np.int64)))


def attach_questions(
    listed: pa.Table, common: Sequence[str], questions: Optional[pa.Table],
    input_uri: Optional[str] = None, allowed_prefixes: Sequence[str] = (),
) -> tuple[pa.Table, int]:
    """Fill the `questions` column of a LISTED table; returns (table, videos skipped for want of questions).

    Every video gets `common` first, then its own questions from the QUESTIONS table (read_questions), in
    file order, duplicates dropped: a join on video_uri, in Arrow.
    """
    common = list(dict.fromkeys(common))
    field = LISTED.field("questions")
    if questions is None or not questions.num_rows:
        if common:
            return listed.set_column(listed.schema.get_field_index("questions"), field, repeat_list(common, listed.num_rows)), 0
        failed = pc.is_valid(listed.column("error"))  # nothing to ask: only error rows stay
        kept = listed.filter(failed)
        kept = kept.set_column(kept.schema.get_field_index("questions"), field, repeat_list([], kept.num_rows))
        return kept, listed.num_rows - kept.num_rows
    listed = listed.combine_chunks()
    n, k = listed.num_rows, len(common)
    own = own_questions(questions, common)
    videos = pa.table({"video_uri": canonical_uris(listed.column("video_uri")), "row": pa.array(np.arange(n, dtype=np.int64))})
    # One join: rows with a `row` belong to listed videos, the others name videos the listing did not find.
    joined = own.join(videos, "video_uri", join_type="left outer", use_threads=False)
    found = pc.is_valid(joined.column("row"))
    asked = pa.concat_tables([
        pa.table({"row": pa.array(np.repeat(np.arange(n, dtype=np.int64), k)),
                  "position": pa.array(np.tile(np.arange(k, dtype=np.int64), n)),
                  "question": pa.array(common, pa.string()).take(np.tile(np.arange(k, dtype=np.int64), n)),
                  "start_s": pa.nulls(n * k, pa.float64()), "end_s": pa.nulls(n * k, pa.float64())}),
        joined.filter(found).select(["row", "position", "question", "start_s", "end_s"]),
    ]).sort_by([("row", "ascending"), ("position", "ascending")])
    missing = joined.filter(pc.invert(found)).select(["video_uri", "question", "position"])
    del joined
    rows = asked.column("row").to_numpy()
    listed = listed.set_column(listed.schema.get_field_index("questions"), field,
                               lists_by_row(rows, asked.column("question").combine_chunks(), n))
    if pc.any(pc.is_valid(asked.column("start_s"))).as_py():  # ranges parallel to questions; else null, as without them
        for name in ("start_s", "end_s"):
            listed = listed.set_column(listed.schema.get_field_index(f"question_{name}"), LISTED.field(f"question_{name}"),
                                       lists_by_row(rows, asked.column(name).combine_chunks(), n))
    pa.default_memory_pool().release_unused()
    has_questions = np.bincount(rows, minlength=n) > 0 if len(rows) else np.zeros(n, dtype=bool)
    keep = pc.or_(pa.array(has_questions), pc.is_valid(listed.column("error")))
    return pa.concat_tables([listed.filter(keep), not_listed(missing, common, input_uri, allowed_prefixes)]), \
        n - pc.sum(keep.cast(pa.int64())).as_py()


def not_listed(
    missing: pa.Table, common: Sequence[str], input_uri: Optional[str], allowed_prefixes: Sequence[str]
) -> pa.Table:
    """LISTED error rows (stage list) for the videos the questions file names that the listing did not find
    (`missing`: their video_uri, question, position): FileNotFoundError, or PathOutsideInput for an entry
    outside the input location and allowed_prefixes."""
    if not missing.num_rows:
        return LISTED.empty_table()
    missing = missing.sort_by([("video_uri", "ascending"), ("position", "ascending")])
    uris = missing.column("video_uri").to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, uris[1:] != uris[:-1]])
    keys = uris[starts].tolist()
    own_lists = pa.ListArray.from_arrays(pa.array(np.r_[starts, len(uris)].astype(np.int32)),
                                         missing.column("question").combine_chunks())
    lists = [[*common, *qs] for qs in own_lists.to_pylist()]  # one row per missing video: bounded by the file's errors
    rows = []
    for key, asked in zip(keys, lists):
        error_type, error = "FileNotFoundError", "named in questions_file but not found by the listing of input.uri"
        if input_uri is not None and not is_within(key, (base_of(input_uri), *allowed_prefixes)):
            outside = PathOutsideInput.entry("questions_file", key, base_of(input_uri))
            error_type, error = type(outside).__name__, str(outside)
        rows.append({**dict.fromkeys(LISTED.names), "video_uri": key, "questions": asked,
                     "error_stage": "list", "error_type": error_type, "error": error})
    return pa.Table.from_pylist(rows, schema=LISTED)
