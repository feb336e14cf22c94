"""Stage 1: expand input URIs into one row per video (video_uri, video_version, video_size).

An input URI is one of:
    a folder or prefix        /data/clips, file:///data/clips, s3://bucket/clips/  (recursive, by extension)
    a glob                    s3://bucket/clips/**/*.mp4, /data/*.mkv
    a manifest file           *.txt (one URI per line, '#' comments), *.jsonl / *.parquet / *.csv with a
                              `video_uri` (or `uri`) column; relative entries are relative to the manifest
    a single video file       /data/clip.mp4

The version is the S3 ETag when the store gives one, else "size:mtime"; it changes when the object does.
A manifest entry that does not exist becomes a row with an error (stage "list"), so it is accounted for.

Nothing here holds one Python object per video: folders and prefixes are walked as a stream (os.scandir,
S3 list pages) into Arrow record batches of BATCH_ROWS rows, built column by column; manifest entries are
resolved in chunks of BATCH_ROWS and checked (`info`, one HEAD each on S3) MANIFEST_CONCURRENCY at a time.
A manifest entry may not leave the manifest's own folder (`../x.mp4`, an absolute path elsewhere,
another scheme) unless it lies under one of `input.allowed_prefixes`: such an entry is never read and
becomes an error row (stage "list", error_type PathOutsideInput) that names the entry.
"""

from __future__ import annotations

import asyncio
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Mapping, Optional, Sequence

import fsspec
import fsspec.asyn
import fsspec.utils
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import LISTED
from pipeline.storage import TABLE_SUFFIXES, PathOutsideInput, filesystem, is_within, mtime_of, read_table_file, to_uri

MANIFEST_SUFFIXES = (".txt", *TABLE_SUFFIXES)
GLOB_CHARS = set("*?[")
BATCH_ROWS = 65_536  # rows per record batch of a listing
MANIFEST_CONCURRENCY = 64  # manifest entries checked at once (S3: HEAD requests in flight)


def version_of(info: Mapping[str, Any]) -> Optional[str]:
    """ETag when the store has one (S3), else size:mtime (local files and most other stores)."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    mtime = mtime_of(info)
    return f"{info.get('size')}:{mtime}" if mtime is not None else None


class _Rows:
    """LISTED rows built column by column and cut into record batches of BATCH_ROWS rows."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self._clear()

    def _clear(self) -> None:
        self.cols: dict[str, list] = {name: [] for name in ("video_uri", "video_version", "video_size", "error_type", "error")}

    def add(self, uri: str, version: Optional[str], size: Optional[int], error: Optional[BaseException] = None) -> None:
        c = self.cols
        c["video_uri"].append(uri)
        c["video_version"].append(version)
        c["video_size"].append(size)
        c["error_type"].append(None if error is None else type(error).__name__)
        c["error"].append(None if error is None else (str(error) or type(error).__name__))
        if len(c["video_uri"]) >= BATCH_ROWS:
            self.flush()

    def add_info(self, uri: str, info: Mapping[str, Any]) -> None:
        self.add(uri, version_of(info), int(info["size"]) if info.get("size") is not None else None)

    def flush(self) -> None:
        c = self.cols
        n = len(c["video_uri"])
        if not n:
            return
        error_type = pa.array(c["error_type"], pa.string())
        stage = pc.if_else(pc.is_valid(error_type), pa.scalar("list"), pa.scalar(None, pa.string()))
        self.batches.append(pa.RecordBatch.from_arrays(
            [pa.array(c["video_uri"], pa.string()), pa.array(c["video_version"], pa.string()),
             pa.array(c["video_size"], pa.int64()), pa.nulls(n, LISTED.field("questions").type),
             pa.nulls(n, LISTED.field("question_start_s").type), pa.nulls(n, LISTED.field("question_end_s").type), stage, error_type,
             pa.array(c["error"], pa.string())],
            schema=LISTED,
        ))
        self._clear()

    def table(self) -> pa.Table:
        self.flush()
        return pa.Table.from_batches(self.batches, schema=LISTED)


# ---- walking a folder or prefix as a stream: (path, size, version) of every file under it -------------


def _scan_local(folder: str) -> Iterator[tuple[str, int, Optional[str]]]:
    """One local folder's entries as fsspec's LocalFileSystem sees them: files as (path, size, size:mtime)
    (a symlink with its target's size and its own mtime, not descended into), sub-folders as (path, -1, None)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield entry.path, -1, None
                continue
            st = entry.stat(follow_symlinks=False)
            size = st.st_size
            if entry.is_symlink():
                try:
                    size = entry.stat().st_size
                except OSError:
                    size = 0
            yield entry.path, size, f"{size}:{float(st.st_mtime)}"


def _walk_local(root: str) -> Iterator[tuple[str, int, str]]:
    """Files under a local folder, without holding the listing."""
    stack = [root]
    while stack:
        for path, size, version in _scan_local(stack.pop()):
            if size < 0:
                stack.append(path)
            else:
                yield path, size, version


async def _s3_page(listing, n: int) -> list[dict]:
    """Up to n more entries of an s3fs `_iterdir` listing (an async generator)."""
    out = []
    while len(out) < n:
        try:
            out.append(await listing.__anext__())
        except StopAsyncIteration:
            break
    return out


def _walk_s3(fs, path: str, delimiter: str = "") -> Iterator[tuple[str, int, Optional[str]]]:
    """Objects under an S3 prefix, one list page after another (s3fs keeps nothing in its cache). With
    delimiter "/", one level: objects directly under it, and each common prefix as (name, -1, None)."""
    bucket, _, key = path.strip("/").partition("/")
    listing = fs._iterdir(bucket, delimiter=delimiter, prefix=f"{key}/" if key else "")
    try:
        while page := fsspec.asyn.sync(fs.loop, _s3_page, listing, BATCH_ROWS):
            for info in page:
                if info.get("type") != "directory":
                    yield info["name"], int(info["size"]), version_of(info)
                elif delimiter:
                    yield info["name"], -1, None
    finally:
        fsspec.asyn.sync(fs.loop, listing.aclose)


def _level(fs, path: str) -> Iterator[tuple[str, int, Optional[str]]]:
    """One level of a folder or prefix, streamed: files as (path, size, version), sub-folders as (path, -1, None)."""
    if fs.unstrip_protocol(path).startswith("file://"):
        yield from _scan_local(path)
    elif hasattr(fs, "_iterdir"):  # s3fs
        yield from _walk_s3(fs, path, delimiter="/")
    else:
        for info in fs.ls(path, detail=True):
            if info.get("type") == "directory":
                yield info["name"], -1, None
            else:
                yield info["name"], info.get("size"), version_of(info)


def _walk(fs, path: str) -> Iterator[tuple[str, int, Optional[str]]]:
    if fs.unstrip_protocol(path).startswith("file://"):
        return _walk_local(path)
    if hasattr(fs, "_iterdir"):  # s3fs
        return _walk_s3(fs, path)
    # Other fsspec stores: their own find (which returns the whole listing at once).
    return ((p, info.get("size"), version_of(info)) for p, info in sorted(fs.find(path, detail=True).items())
            if info.get("type") != "directory")


# ---- manifests ---------------------------------------------------------------------------------------------


def _read_manifest(fs, path: str, storage_options: Mapping[str, Any]) -> pa.Array:
    """The entries of a manifest file (strings), in file order."""
    if path.lower().endswith(".txt"):
        text = pa.array([fs.cat_file(path).decode("utf-8")])
        lines = pc.utf8_trim_whitespace(pc.list_flatten(pc.split_pattern(text, "\n")))
        keep = pc.and_(pc.not_equal(lines, ""), pc.invert(pc.starts_with(lines, "#")))
        return lines.filter(keep)
    table = read_table_file(to_uri(fs, path), storage_options)
    column = next((c for c in ("video_uri", "uri") if c in table.column_names), None)
    if column is None:
        raise ValueError(f"manifest {path} needs a `video_uri` or `uri` column, has {table.column_names}")
    values = pc.cast(table.column(column), pa.string()).combine_chunks()
    return values.filter(pc.and_(pc.is_valid(values), pc.not_equal(values, "")))


def _first_of_each(table: pa.Table, key: str) -> pa.Table:
    """The table with only the first row of each distinct `key`, order kept."""
    if table.num_rows == 0:
        return table
    numbered = pa.table({"k": table.column(key), "i": np.arange(table.num_rows)})
    first = numbered.group_by("k", use_threads=False).aggregate([("i", "min")]).column("i_min").to_numpy()
    return table.take(np.sort(first))


def _resolve(entry: str, base_uri: str) -> str:
    """A manifest entry as a full URI: absolute entries as they are, relative ones under base_uri."""
    if "://" in entry or entry.startswith("/"):
        return entry
    return f"{base_uri.rstrip('/')}/{entry}"


async def _info_all(fs, paths: Sequence[str]) -> list:
    limit = asyncio.Semaphore(MANIFEST_CONCURRENCY)

    async def one(path):
        async with limit:
            try:
                return await fs._info(path)
            except Exception as exc:  # missing or unreadable entry: an error row, not a failed listing
                return exc

    return await asyncio.gather(*(one(p) for p in paths))


def _infos(fs, paths: Sequence[str]) -> list:
    """fs.info of each path (or the exception it raised), MANIFEST_CONCURRENCY requests at a time."""
    if isinstance(fs, fsspec.asyn.AsyncFileSystem):
        return fsspec.asyn.sync(fs.loop, _info_all, fs, paths)

    def one(path):
        try:
            return fs.info(path)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(MANIFEST_CONCURRENCY) as threads:
        return list(threads.map(one, paths))


class ListVideos:
    """Callable for `Dataset.map_batches(batch_format="pyarrow")`: column `input_uri` in, LISTED rows out.

    The job calls it on the driver (from a driver-side table Ray can split the videos into even blocks
    for the decode pool); it works the same inside map_batches.
    """

    def __init__(
        self, extensions: Sequence[str], storage_options: Optional[Mapping[str, Any]] = None,
        allowed_prefixes: Sequence[str] = (),
    ):
        self.extensions = tuple(e.lower() for e in extensions)
        self.allowed_prefixes = tuple(allowed_prefixes)
        self.storage_options = dict(storage_options or {})

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = [self.list_one(uri) for uri in batch.column("input_uri").to_pylist()]
        table = pa.concat_tables(tables) if tables else LISTED.empty_table()
        return table.sort_by("video_uri")  # deterministic order, so reruns batch the same way

    def list_one(self, uri: str) -> pa.Table:
        fs, path = filesystem(uri, self.storage_options)
        fs.invalidate_cache()  # fsspec instances are shared per process: never list from a stale cache
        rows = _Rows()
        if GLOB_CHARS & set(path):
            # Walk the folder above the first wildcard, keep what the pattern matches.
            root = path[: min(path.index(c) for c in GLOB_CHARS if c in path)].rsplit("/", 1)[0]
            pattern = re.compile(fsspec.utils.glob_translate(path))
            found = _walk(fs, root) if fs.isdir(root) else ()
            for p, size, version in found:
                if pattern.match(p):
                    rows.add(to_uri(fs, p), version, size)
        elif fs.isdir(path):
            for p, size, version in _walk(fs, path):
                if p.lower().endswith(self.extensions):
                    rows.add(to_uri(fs, p), version, size)
        elif path.lower().endswith(MANIFEST_SUFFIXES):
            return self._list_manifest(fs, path)
        else:
            rows.add_info(to_uri(fs, path), fs.info(path))  # one video; FileNotFoundError if absent
        return rows.table()

    def _list_manifest(self, fs, path: str) -> pa.Table:
        base = to_uri(fs, path).rsplit("/", 1)[0]
        entries = _first_of_each(pa.table({"e": _read_manifest(fs, path, self.storage_options)}), "e").column("e")
        tables = [resolve_entries(entries.slice(start, BATCH_ROWS).to_pylist(), base, self.storage_options, self.allowed_prefixes)
                  for start in range(0, len(entries), BATCH_ROWS)]
        table = pa.concat_tables(tables) if tables else LISTED.empty_table()
        return _first_of_each(table, "video_uri")  # two spellings of one file (a/../b.mp4, b.mp4): one row


def resolve_entries(
    entries: Sequence[str], base: str, storage_options: Mapping[str, Any], allowed_prefixes: Sequence[str] = ()
) -> pa.Table:
    """LISTED rows of manifest entries (relative to `base`): each checked with one `info` (an S3 HEAD),
    MANIFEST_CONCURRENCY at a time; a missing, unreadable or outside entry is an error row naming it."""
    rows = _Rows()
    to_check: dict[int, list[tuple[str, str, str]]] = {}  # id(fs) -> [(target, uri, path)]
    filesystems = {}
    for entry in entries:
        target = _resolve(entry, base)
        if not is_within(target, (base, *allowed_prefixes)):
            rows.add(target, None, None, PathOutsideInput.entry("manifest", entry, base))
            continue
        try:
            entry_fs, entry_path = filesystem(target, storage_options)
        except Exception as exc:
            rows.add(target, None, None, exc)
            continue
        filesystems[id(entry_fs)] = entry_fs
        to_check.setdefault(id(entry_fs), []).append((target, to_uri(entry_fs, entry_path), entry_path))
    for key, items in to_check.items():
        for (target, uri, _), info in zip(items, _infos(filesystems[key], [p for _, _, p in items])):
            if isinstance(info, BaseException):
                rows.add(target, None, None, info)
            else:
                rows.add_info(uri, info)
    return rows.table()


def list_videos(
    uri: str, extensions: Sequence[str], storage_options: Optional[Mapping[str, Any]] = None, allowed_prefixes: Sequence[str] = ()
) -> pa.Table:
    """The LISTED table of one input URI (driver-side convenience around ListVideos)."""
    return ListVideos(extensions, storage_options, allowed_prefixes)(pa.table({"input_uri": [uri]}))


# ---- listing on workers: the driver lists a few levels of folders, Ray tasks list what is under them --------

PARTS_WANTED = 64  # the driver descends until the input is cut into at least this many folders (or MAX_DEPTH)
MAX_DEPTH = 3


def list_parts(uri: str, storage_options: Optional[Mapping[str, Any]] = None) -> list[dict[str, Any]]:
    """The pieces a folder or prefix is listed in: [{"input_uri", "recursive"}]. The driver walks folder
    levels breadth first (streamed, keeping only the sub-folders) until there are PARTS_WANTED of them or
    MAX_DEPTH levels; every folder it opened is one non-recursive piece (its own files), every folder it
    left closed one recursive piece. Together they cover each file once."""
    fs, path = filesystem(uri, storage_options)
    fs.invalidate_cache()
    if not fs.isdir(path):
        raise ValueError(f"input.uri {uri}: listing on workers needs a folder or prefix")
    closed, opened = [path], []
    for _ in range(MAX_DEPTH):
        if len(closed) >= PARTS_WANTED:
            break
        below = []
        for folder in closed:
            below.extend(p for p, size, _ in _level(fs, folder) if size is not None and size < 0)
            opened.append(folder)
        closed = below
    return ([{"input_uri": to_uri(fs, p), "recursive": False} for p in opened]
            + [{"input_uri": to_uri(fs, p), "recursive": True} for p in closed])


def list_part_rows(parts: pa.Table, extensions: Sequence[str], storage_options: Optional[Mapping[str, Any]] = None) -> Iterator[pa.Table]:
    """For `map_batches(batch_format="pyarrow")`: pieces of list_parts in, LISTED batches of the files under
    them with these extensions out, BATCH_ROWS at a time (a generator: a task holds one batch)."""
    extensions = tuple(e.lower() for e in extensions)
    for part in parts.to_pylist():
        fs, path = filesystem(part["input_uri"], storage_options)
        found = _walk(fs, path) if part["recursive"] else (e for e in _level(fs, path) if e[1] is None or e[1] >= 0)
        rows = _Rows()
        for p, size, version in found:
            if p.lower().endswith(extensions):
                rows.add(to_uri(fs, p), version, size)
                if rows.batches:
                    yield pa.Table.from_batches(rows.batches, schema=LISTED)
                    rows.batches.clear()
        rows.flush()
        if rows.batches:
            yield pa.Table.from_batches(rows.batches, schema=LISTED)


def list_on_workers(uri: str, extensions: Sequence[str], storage_options: Optional[Mapping[str, Any]] = None):
    """A folder or prefix listed by Ray tasks, one per piece of list_parts: a lazy dataset of LISTED rows
    (the same rows as ListVideos, in no particular order)."""
    import ray

    parts = list_parts(uri, storage_options)
    return ray.data.from_items(parts, override_num_blocks=len(parts)).map_batches(
        list_part_rows, fn_kwargs=dict(extensions=list(extensions), storage_options=storage_options),
        batch_size=1, batch_format="pyarrow",
    )


def manifest_entries(files: pa.Table, storage_options: Optional[Mapping[str, Any]] = None) -> Iterator[pa.Table]:
    """For `map_batches`: manifest files in (column `input_uri`), their entries out as (entry, base), in
    chunks of BATCH_ROWS."""
    for uri in files.column("input_uri").to_pylist():
        fs, path = filesystem(uri, storage_options)
        entries = _read_manifest(fs, path, storage_options)
        base = to_uri(fs, path).rsplit("/", 1)[0]
        for start in range(0, len(entries), BATCH_ROWS):
            chunk = entries.slice(start, BATCH_ROWS)
            yield pa.table({"entry": chunk, "base": pa.array([base] * len(chunk), pa.string())})


def resolve_entry_rows(batch: pa.Table, storage_options: Optional[Mapping[str, Any]] = None, allowed_prefixes: Sequence[str] = ()) -> pa.Table:
    """For `map_batches`: (entry, base) in, LISTED rows out (resolve_entries, on a worker)."""
    if not batch.num_rows:
        return LISTED.empty_table()
    return resolve_entries(batch.column("entry").to_pylist(), batch.column("base")[0].as_py(), storage_options or {}, allowed_prefixes)


def manifest_on_workers(uri: str, storage_options: Optional[Mapping[str, Any]] = None, allowed_prefixes: Sequence[str] = ()):
    """A manifest file (txt, Parquet, JSONL, CSV) read by one task and its entries checked by many: a lazy
    dataset of LISTED rows, missing entries as error rows. A video named twice is one row after the
    planner's regrouping (pipeline.todo), not here."""
    import ray

    return ray.data.from_items([{"input_uri": uri}]).map_batches(
        manifest_entries, fn_kwargs=dict(storage_options=storage_options), batch_size=1, batch_format="pyarrow",
    ).map_batches(
        resolve_entry_rows, fn_kwargs=dict(storage_options=storage_options, allowed_prefixes=list(allowed_prefixes)),
        batch_size=4096, batch_format="pyarrow",
    )
