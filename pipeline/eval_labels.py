"""The evaluation's labels file: one row per item (video_uri, question, answer, choices, question_type,
object_patches, and optionally start_s / end_s: the time range it asks about), checked row by row, and the
items each listed video gets.

    from pipeline.eval_labels import LabelsFileError, items_by_video, read_labels
    labelled = read_labels("shapes-eval/test/questions.jsonl")   # LabelsFileError names the file and the row
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Sequence

from pipeline.questions import resolve_entry
from pipeline.storage import filesystem, normalize_uri, read_table_file


class LabelsFileError(ValueError):
    """A labels file that cannot be read or has a malformed row; the message names the file (and the row)."""


def check_item(uri: str, n: int, row: Any) -> dict[str, Any]:
    """One labels row, checked; a ValueError names the file and the row (1-based, = the JSONL line)."""

    def bad(what: str) -> LabelsFileError:
        return LabelsFileError(f"labels file {uri}, row {n}: {what}")

    if not isinstance(row, dict):
        raise bad(f"expected an object with video_uri and question, got {type(row).__name__}")
    for key in ("video_uri", "question"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise bad(f"{key} must be a non-empty string, got {row.get(key)!r}")
    answer = row.get("answer")
    if answer is not None and (isinstance(answer, (bool, dict, list)) or not isinstance(answer, (str, int, float))):
        raise bad(f"answer must be a string, a number or null, got {answer!r}")
    choices = row.get("choices")
    if choices is not None and (
        not isinstance(choices, (list, tuple)) or len(choices) < 2
        or not all(isinstance(c, str) and c.strip() for c in choices)
    ):
        raise bad(f"choices must be null or a list of at least 2 non-empty strings, got {choices!r}")
    question_type = row.get("question_type")
    if question_type is not None and not isinstance(question_type, str):
        raise bad(f"question_type must be a string or null, got {question_type!r}")
    patches = row.get("object_patches")
    if patches is not None and not (
        isinstance(patches, (list, tuple)) and all(
            isinstance(p, (list, tuple)) and len(p) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in p) for p in patches
        )
    ):
        raise bad(f"object_patches must be null or a list of [frame, index] pairs of ints >= 0, got {patches!r}")
    start_s, end_s = row.get("start_s"), row.get("end_s")
    numbers = [v for v in (start_s, end_s) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if (start_s, end_s) != (None, None) and (len(numbers) != 2 or not 0 <= start_s < end_s):
        raise bad(f"start_s and end_s must both be set with 0 <= start_s < end_s, or both null; got {start_s!r}, {end_s!r}")
    return {
        "video_uri": row["video_uri"], "question": row["question"],
        "start_s": None if start_s is None else float(start_s), "end_s": None if end_s is None else float(end_s),
        "expected": None if answer is None or str(answer).strip() == "" else str(answer),
        "choices": None if choices is None else list(choices),
        "question_type": question_type,
        "object_patches": None if patches is None else [[int(f), int(i)] for f, i in patches],
    }


def read_labels(uri: str, storage_options: Optional[Mapping[str, Any]] = None) -> list[dict[str, Any]]:
    """The items of a labels file (JSONL read line by line, so a broken line is named; Parquet, CSV)."""
    fs, path = filesystem(uri, storage_options)
    if path.lower().endswith((".jsonl", ".json")):
        try:
            text = fs.cat_file(path).decode("utf-8")
        except FileNotFoundError:
            raise LabelsFileError(f"labels file {uri}: not found") from None
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise LabelsFileError(f"labels file {uri}, row {n}: not valid JSON ({exc.msg})") from None
    else:
        try:
            rows = list(enumerate(read_table_file(uri, storage_options).to_pylist(), 1))
        except ValueError as exc:
            raise LabelsFileError(f"labels file {exc}") from None
    if not rows:
        raise LabelsFileError(f"labels file {uri}: no rows")
    return [check_item(uri, n, row) for n, row in rows]


def items_by_video(
    questions: Sequence[str], input_uri: str, videos: Sequence[str], labelled: Sequence[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """{canonical video URI: its items}: the labels file's rows (`read_labels`) of each listed video, then
    `questions` (the config's, unlabelled). Each item gets an `item` number, unique in the run."""
    out: dict[str, list[dict[str, Any]]] = {normalize_uri(v): [] for v in videos}
    for item in labelled:
        key = resolve_entry(item["video_uri"], input_uri)
        if key in out:
            out[key].append({**item, "video_uri": key})
    for key in out:
        out[key] += [
            {"video_uri": key, "question": q, "start_s": None, "end_s": None, "expected": None, "choices": None,
             "question_type": None, "object_patches": None}
            for q in questions
        ]
    number = 0
    for key in out:
        for item in out[key]:
            item["item"] = number
            number += 1
    return out

