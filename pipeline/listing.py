"""Stage 1: expand input URIs into one row per video (video_uri, video_version, video_size).

An input URI is one of:
    a folder or prefix        /data/clips, file:///data/clips, s3://bucket/clips/  (recursive, by extension)
    a glob                    s3://bucket/clips/**/*.mp4, /data/*.mkv
    a manifest file           *.txt (one URI per line, '#' comments), *.jsonl / *.parquet / *.csv with a
                              `video_uri` (or `uri`) column; relative entries are relative to the manifest
    a single video file       /data/clip.mp4

The version is the S3 ETag when the store gives one, else "size:mtime"; it changes when the object does.
A manifest entry that does not exist becomes a row with an error (stage "list"), so it is accounted for.
A manifest entry may not leave the manifest's own folder (`../x.mp4`, an absolute path elsewhere,
another scheme) unless it lies under one of `input.allowed_prefixes`: such an entry is never read and
becomes an error row (stage "list", error_type PathOutsideInput) that names the entry.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import pyarrow as pa

from pipeline.schema import LISTED
from pipeline.storage import TABLE_SUFFIXES, PathOutsideInput, filesystem, is_within, mtime_of, read_table_file, to_uri

MANIFEST_SUFFIXES = (".txt", *TABLE_SUFFIXES)
_GLOB_CHARS = set("*?[")


def version_of(info: Mapping[str, Any]) -> Optional[str]:
    """ETag when the store has one (S3), else size:mtime (local files and most other stores)."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    mtime = mtime_of(info)
    return f"{info.get('size')}:{mtime}" if mtime is not None else None


def _read_manifest(fs, path: str, storage_options: Mapping[str, Any]) -> list[str]:
    """URIs listed in a manifest file, in file order."""
    if path.lower().endswith(".txt"):
        lines = (line.strip() for line in fs.cat_file(path).decode("utf-8").splitlines())
        return [line for line in lines if line and not line.startswith("#")]
    table = read_table_file(to_uri(fs, path), storage_options)
    column = next((c for c in ("video_uri", "uri") if c in table.column_names), None)
    if column is None:
        raise ValueError(f"manifest {path} needs a `video_uri` or `uri` column, has {table.column_names}")
    return [str(u) for u in table.column(column).to_pylist() if u]


def _resolve(entry: str, base_uri: str) -> str:
    """A manifest entry as a full URI: absolute entries as they are, relative ones under base_uri."""
    if "://" in entry or entry.startswith("/"):
        return entry
    return f"{base_uri.rstrip('/')}/{entry}"


def _row(uri: str, info: Optional[Mapping[str, Any]], questions=None, error: Optional[BaseException] = None) -> dict:
    row = {
        "video_uri": uri,
        "video_version": version_of(info) if info else None,
        "video_size": int(info["size"]) if info and info.get("size") is not None else None,
        "questions": questions,
        "error_stage": None,
        "error_type": None,
        "error": None,
    }
    if error is not None:
        row.update(error_stage="list", error_type=type(error).__name__, error=str(error) or type(error).__name__)
    return row


class ListVideos:
    """Callable for `Dataset.map_batches(batch_format="pyarrow")`: column `input_uri` in, LISTED rows out.

    The job calls it on the driver (a listing is small, and from a driver-side table Ray can split the
    videos into even blocks for the decode pool); it works the same inside map_batches.
    """

    def __init__(
        self, extensions: Sequence[str], storage_options: Optional[Mapping[str, Any]] = None,
        allowed_prefixes: Sequence[str] = (),
    ):
        self.extensions = tuple(e.lower() for e in extensions)
        self.allowed_prefixes = tuple(allowed_prefixes)
        self.storage_options = dict(storage_options or {})

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict] = []
        for uri in batch.column("input_uri").to_pylist():
            rows.extend(self.list_one(uri))
        rows.sort(key=lambda r: r["video_uri"])  # deterministic order, so reruns batch the same way
        return pa.Table.from_pylist(rows, schema=LISTED)

    def list_one(self, uri: str) -> list[dict]:
        fs, path = filesystem(uri, self.storage_options)
        fs.invalidate_cache()  # fsspec instances are shared per process: never list from a stale cache
        if _GLOB_CHARS & set(path):
            found = fs.glob(path, detail=True)
            return [_row(to_uri(fs, p), info) for p, info in sorted(found.items()) if info.get("type") != "directory"]
        if fs.isdir(path):
            found = fs.find(path, detail=True)
            return [
                _row(to_uri(fs, p), info)
                for p, info in sorted(found.items())
                if info.get("type") != "directory" and p.lower().endswith(self.extensions)
            ]
        if path.lower().endswith(MANIFEST_SUFFIXES):
            return self._list_manifest(fs, path)
        return [_row(to_uri(fs, path), fs.info(path))]  # one video; FileNotFoundError if absent

    def _list_manifest(self, fs, path: str) -> list[dict]:
        base = to_uri(fs, path).rsplit("/", 1)[0]
        rows, seen = [], set()
        for entry in dict.fromkeys(_read_manifest(fs, path, self.storage_options)):  # drop duplicates, keep order
            target = _resolve(entry, base)
            if not is_within(target, (base, *self.allowed_prefixes)):
                error = PathOutsideInput.entry("manifest", entry, base)
                rows.append(_row(target, None, error=error))
                continue
            try:
                entry_fs, entry_path = filesystem(target, self.storage_options)
                uri = to_uri(entry_fs, entry_path)
                if uri not in seen:  # two spellings of one file (a/../b.mp4, b.mp4): one row
                    seen.add(uri)
                    rows.append(_row(uri, entry_fs.info(entry_path)))
            except Exception as exc:  # missing or unreadable entry: an error row, not a failed listing
                rows.append(_row(target, None, error=exc))
        return rows


def list_videos(
    uri: str, extensions: Sequence[str], storage_options: Optional[Mapping[str, Any]] = None, allowed_prefixes: Sequence[str] = ()
) -> pa.Table:
    """The LISTED table of one input URI (driver-side convenience around ListVideos)."""
    return ListVideos(extensions, storage_options, allowed_prefixes)(pa.table({"input_uri": [uri]}))
