"""One filesystem layer for every stage: fsspec for reading and listing, pyarrow's view of it for writing.

Local paths, file:// and s3:// (s3fs) go through the same calls. s3fs reads the standard AWS variables
itself (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, AWS_REGION);
`storage_options` from the config are passed to remote filesystems only (a local folder needs none).
Nothing here logs an option's value: `redact_options` is what callers print or store.
Also here, as every module reads and writes through it: `read_table_file` (manifests, questions files),
`write_atomic` (every file the pipeline writes) and `RangeReader` (a file object over byte-range reads,
for the time segments of long videos).
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import uuid
from typing import Any, Mapping, Optional

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

# storage_options keys whose values are settings, not credentials: shown in logs and runs.config as they
# are. Every other value is masked, so a credential under a name nobody listed (SSECustomerKey, accessKey,
# api-key, a new backend's option) never reaches a table or a log; masking a harmless setting costs only
# its visibility. A dict or list under a listed key (client_kwargs, config_kwargs, ...) is masked by the
# same rule, key by key.
PUBLIC_OPTIONS = frozenset({
    # s3fs.S3FileSystem
    "anon", "endpoint_url", "use_ssl", "requester_pays", "version_aware", "cache_regions", "max_concurrency",
    "default_block_size", "default_fill_cache", "default_cache_type", "client_kwargs", "config_kwargs",
    "s3_additional_kwargs",
    # boto3 client (client_kwargs) and botocore Config (config_kwargs)
    "region_name", "verify", "api_version", "retries", "max_attempts", "mode", "connect_timeout",
    "read_timeout", "max_pool_connections", "signature_version", "s3", "addressing_style",
    # s3_additional_kwargs: how objects are stored (SSEKMSKeyId and SSECustomerKey stay masked)
    "ServerSideEncryption", "ACL", "StorageClass",
})
_MASK = "***"
_USERINFO = re.compile(r"(?<=://)[^/@]*@")  # 'http://user:password@host' -> 'http://***@host'


def redact_options(options: Any, _public: bool = True) -> Any:
    """A copy of storage_options with every value masked ('***') unless its key is in PUBLIC_OPTIONS.

    Nested dicts and lists under public keys are walked with the same rule; None stays None (there
    is nothing to hide, and it shows the option is unset); a URL keeps its host but not its user:password."""
    if not _public:
        return None if options is None else _MASK
    if isinstance(options, Mapping):
        return {k: redact_options(v, str(k) in PUBLIC_OPTIONS) for k, v in options.items()}
    if isinstance(options, (list, tuple)):
        return [redact_options(v) for v in options]
    if isinstance(options, str):
        return _USERINFO.sub(_MASK + "@", options)
    return options


def protocol_of(uri: str) -> str:
    """'s3' for s3://..., 'file' for file:// and plain paths."""
    proto = fsspec.utils.get_protocol(uri)
    return "file" if proto in ("file", "local") else proto


def is_local(uri: str) -> bool:
    return protocol_of(uri) == "file"


# botocore's default ("legacy", 5 attempts) gives up after a few seconds of refused connections, failing a
# whole Parquet write (and the run) when the S3 endpoint restarts. "standard" mode retries connection errors,
# throttling and 5xx with capped exponential backoff (random * 2**n s, at most 20 s a wait): 10 attempts ride
# out an outage of tens of seconds and are still bounded. A config's storage_options.config_kwargs.retries wins.
S3_RETRIES = {"max_attempts": 10, "mode": "standard"}


def with_retries(protocol: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """storage_options with bounded S3 retries added unless the caller chose its own."""
    options = dict(options)
    if protocol in ("s3", "s3a"):
        config_kwargs = dict(options.get("config_kwargs") or {})
        config_kwargs.setdefault("retries", dict(S3_RETRIES))
        options["config_kwargs"] = config_kwargs
    return options


def filesystem(uri: str, storage_options: Optional[Mapping[str, Any]] = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for a URI; relative local paths become absolute."""
    if is_local(uri):
        fs, path = fsspec.core.url_to_fs(uri)
        return fs, os.path.abspath(path)  # '/a/../b' -> '/b', so one file has one URI (symlinks kept)
    return fsspec.core.url_to_fs(uri, **with_retries(protocol_of(uri), storage_options or {}))


RANGE_BLOCK = 1 << 20  # bytes a read that misses fetches at least: a container index's reads
RANGE_KEEP = 64 << 20  # fetched bytes a RangeReader holds on to for later reads


class RangeReader(io.RawIOBase):
    """A seekable, read-only file object over byte-range reads of one object (`fs.cat_file(path, start, end)`).

    A read that misses the bytes held fetches at least `fetch` bytes from its position in one request: set
    `fetch` to the bytes a time range spans and its frames cost one request (an S3 GET is ~100x a
    buffered read), where a fixed small block would cost one per block. Fetched ranges stay, up to `keep`
    bytes (least recently read dropped first), so reading the same object again, e.g. the next time range
    with its container index, does not fetch the index again. bytes_read: bytes fetched so far. size: the
    object's (the listing's, which spares a HEAD request; None: asked of the store).
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, size: Optional[int] = None, fetch: int = RANGE_BLOCK,
                 keep: int = RANGE_KEEP):
        self.fs, self.path, self.size = fs, path, fs.size(path) if size is None else size
        self.fetch, self.keep = fetch, keep
        self.held: list[tuple[int, bytes]] = []  # (offset, bytes), least recently read first
        self.position = 0
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def _range_at(self, position: int, wanted: int) -> tuple[int, bytes]:
        """The held range that holds `position` (if none does, max(fetch, wanted) bytes fetched from there),
        made the most recent."""
        for i, (offset, data) in enumerate(self.held):
            if offset <= position < offset + len(data):
                self.held.append(self.held.pop(i))
                return offset, data
        data = self.fs.cat_file(self.path, start=position, end=min(self.size, position + max(self.fetch, wanted)))
        if not data:
            raise OSError(f"{self.path}: no bytes at offset {position} of {self.size}")
        self.bytes_read += len(data)
        self.held.append((position, data))
        while sum(len(d) for _, d in self.held) > self.keep and len(self.held) > 1:
            self.held.pop(0)
        return position, data

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self.position + size)
        parts = []
        while self.position < end:
            offset, data = self._range_at(self.position, end - self.position)
            part = data[self.position - offset : end - offset]
            parts.append(part)
            self.position += len(part)
        return b"".join(parts)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The full URI of a path in fs ('file:///abs/x.mp4', 's3://bucket/x.mp4'): what the tables store."""
    return fs.unstrip_protocol(path)


def normalize_uri(uri: str) -> str:
    """A canonical spelling, so '/a/b.mp4', 'file:///a/b.mp4' and 'a/../a/b.mp4' compare equal."""
    if is_local(uri):
        fs, path = filesystem(uri)
        return to_uri(fs, path)
    proto = protocol_of(uri)
    return f"{proto}://{fsspec.get_filesystem_class(proto)._strip_protocol(uri)}"


def canonical_uri(uri: str) -> str:
    """normalize_uri with '.' and '..' resolved for remote stores too ('s3://b/v/../x' -> 's3://b/x')."""
    uri = normalize_uri(uri)
    if is_local(uri):
        return uri
    proto, _, path = uri.partition("://")
    return f"{proto}://{posixpath.normpath('/' + path).lstrip('/')}"


def is_within(uri: str, roots) -> bool:
    """Whether uri (after resolving '..') lies inside one of the root URIs (same scheme, same prefix)."""
    target = canonical_uri(uri)
    for root in roots:
        base = canonical_uri(root).rstrip("/")
        if target == base or target.startswith(base + "/"):
            return True
    return False


class PathOutsideInput(PermissionError):
    """A manifest or questions-file entry that points outside the configured input location."""

    @classmethod
    def entry(cls, source: str, entry: str, base: str) -> "PathOutsideInput":
        """The error for one `source` ("manifest", "questions_file") entry that resolves outside `base`."""
        return cls(
            f"{source} entry {entry!r} resolves outside the input location {base}/ "
            "(add its location to input.allowed_prefixes to allow it); not read"
        )


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """pyarrow's view of an fsspec filesystem, so Parquet writes use the same credentials and endpoint."""
    if protocol_of(fs.unstrip_protocol("x")) == "file":
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def join(base: str, *parts: str) -> str:
    """Join path parts with '/', the separator of every filesystem fsspec serves."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def mtime_of(info: Mapping[str, Any]) -> Optional[float]:
    """Modification time (seconds since the epoch) of an fsspec `info` entry, whichever store made it."""
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return None if mtime is None else float(mtime)


# pyarrow's reader for each table file suffix (JSON: one object per line).
_TABLE_READERS = {
    "parquet": pq.read_table, "csv": pacsv.read_csv, "jsonl": pajson.read_json, "ndjson": pajson.read_json,
    "json": pajson.read_json,
}
TABLE_SUFFIXES = tuple(f".{s}" for s in _TABLE_READERS)


def read_table_file(uri: str, storage_options: Optional[Mapping[str, Any]] = None) -> pa.Table:
    """A Parquet, CSV or JSON Lines file as one pyarrow table, the format chosen by its suffix."""
    fs, path = filesystem(uri, storage_options)
    suffix = path.rsplit(".", 1)[-1].lower()
    if suffix not in _TABLE_READERS:
        raise ValueError(f"{uri}: expected one of {', '.join(TABLE_SUFFIXES)}")
    with fs.open(path, "rb") as f:
        try:
            return _TABLE_READERS[suffix](f)
        except pa.ArrowInvalid as exc:
            raise ValueError(f"{uri}: not a readable .{suffix} table: {exc}") from None


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a whole file so that no reader ever sees part of it: one PUT on S3 (atomic there); on a local
    disk a temporary name (`*.tmp`: no `*.parquet` glob picks it up), fsync, then a rename."""
    if protocol_of(fs.unstrip_protocol(path)) != "file":
        fs.pipe_file(path, data)
        return
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with fs.open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fs.mv(tmp, path)
