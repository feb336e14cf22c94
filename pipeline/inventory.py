"""Listing from a bucket inventory, on Ray workers: the same LISTED rows as listing the bucket, without a
LIST request per thousand objects and without a row per video in the driver.

    input.uri: s3://inventory-bucket/inv/videos-bucket/daily/2026-01-01T01-00Z/manifest.json
    input.inventory_prefix: videos/2026/          # only keys under it (optional)
    input.extensions: [.mp4]                      # only these suffixes, as for a folder

An S3 Inventory `manifest.json` names its data files (Parquet, ORC, or headerless gzipped CSV whose
columns its `fileSchema` gives); a folder of such files with `input.inventory: true` is read the same way
(CSV there needs a header row). Each data file is read by one Ray task, a column chunk at a time, and
filtered there (prefix, extension, latest version, no delete markers) before a row leaves the worker; the
driver holds the list of data files only.

Rows: `video_uri` = s3://<bucket>/<key>, `video_version` = the ETag (quotes stripped, as S3 LIST gives it
and as pipeline.listing.version_of keeps it), `video_size` = size. CSV inventories URL-encode keys (space
as '+'); they are decoded here.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Mapping, Optional, Sequence
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.orc as paorc
import pyarrow.parquet as pq

from pipeline.listing import BATCH_ROWS
from pipeline.schema import LISTED
from pipeline.storage import filesystem, join, to_uri

MANIFEST_NAME = "manifest.json"
DATA_SUFFIXES = (".parquet", ".orc", ".csv", ".csv.gz")
# Inventory columns the listing needs, under the names S3 Inventory's Parquet/ORC schema gives them; its CSV
# `fileSchema` names them in CamelCase (Bucket, Key, Size, LastModifiedDate, ETag, IsLatest, IsDeleteMarker).
COLUMNS = ("bucket", "key", "size", "e_tag", "is_latest", "is_delete_marker")
_CSV_NAMES = {"Bucket": "bucket", "Key": "key", "Size": "size", "ETag": "e_tag", "IsLatest": "is_latest",
              "IsDeleteMarker": "is_delete_marker", "LastModifiedDate": "last_modified_date",
              "VersionId": "version_id", "StorageClass": "storage_class"}
ROWS = pa.schema([*(LISTED.field(n) for n in ("video_uri", "video_version", "video_size")),
                  *(LISTED.field(n) for n in ("error_stage", "error_type", "error"))])  # LISTED without the questions


def is_inventory(uri: str) -> bool:
    """Whether input.uri names an S3 Inventory manifest (a folder of inventory files needs input.inventory)."""
    return uri.rstrip("/").rsplit("/", 1)[-1] == MANIFEST_NAME


def _snake(name: str) -> str:
    name = name.strip()
    return _CSV_NAMES.get(name, name)


def inventory_files(uri: str, storage_options: Optional[Mapping[str, Any]] = None) -> list[dict[str, Any]]:
    """The data files of an inventory: [{"uri", "format", "columns"}], from a manifest.json or a folder.

    `columns` is the CSV column order a manifest's fileSchema gives (None: the file has a header row or is
    Parquet/ORC, which name their columns)."""
    fs, path = filesystem(uri, storage_options)
    fs.invalidate_cache()
    if not is_inventory(uri):
        found = sorted(p for p in fs.find(path) if p.lower().endswith(DATA_SUFFIXES))
        if not found:
            raise ValueError(f"input.uri {uri}: no inventory files ({', '.join(DATA_SUFFIXES)}) under it")
        return [{"uri": to_uri(fs, p), "format": _format_of(p), "columns": None} for p in found]
    try:
        manifest = json.loads(fs.cat_file(path))
        file_format, files = manifest["fileFormat"].lower(), manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"input.uri {uri}: not an S3 Inventory manifest.json ({type(exc).__name__}: {exc})") from None
    if file_format not in ("parquet", "orc", "csv"):
        raise ValueError(f"input.uri {uri}: inventory fileFormat {manifest['fileFormat']!r} is not Parquet, ORC or CSV")
    columns = [_snake(c) for c in manifest.get("fileSchema", "").split(",")] if file_format == "csv" else None
    if columns is not None and not {"bucket", "key"} <= set(columns):
        raise ValueError(f"input.uri {uri}: CSV inventory fileSchema {manifest.get('fileSchema')!r} lacks Bucket, Key")
    return [{"uri": _data_file_uri(uri, manifest, f["key"], storage_options), "format": file_format, "columns": columns}
            for f in files]


def _format_of(path: str) -> str:
    lower = path.lower()
    return "parquet" if lower.endswith(".parquet") else "orc" if lower.endswith(".orc") else "csv"


def _data_file_uri(manifest_uri: str, manifest: Mapping[str, Any], key: str, storage_options) -> str:
    """Where a manifest's data file is: s3://<destination bucket>/<key> on S3. A copy elsewhere (a local
    folder) keeps S3's layout <config>/<date>/manifest.json next to <config>/data/<file>."""
    if manifest_uri.startswith(("s3://", "s3a://")):
        bucket = str(manifest.get("destinationBucket", "")).rsplit(":", 1)[-1]
        return f"s3://{bucket}/{key}"
    config_root = manifest_uri.rstrip("/").rsplit("/", 2)[0]
    return join(config_root, *key.split("/")[-2:])


# ---- reading one data file into LISTED rows (on a worker) ------------------------------------------------


def _batches(uri: str, file_format: str, columns: Optional[list[str]], storage_options) -> Iterator[pa.RecordBatch]:
    """The file's inventory columns in record batches of about BATCH_ROWS rows, a column chunk at a time."""
    fs, path = filesystem(uri, storage_options)
    with fs.open(path, "rb") as f:
        if file_format == "parquet":
            pf = pq.ParquetFile(f)
            wanted = [c for c in COLUMNS if c in pf.schema_arrow.names]
            yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=wanted)
        elif file_format == "orc":
            table = paorc.ORCFile(f).read(columns=None)
            yield from table.select([c for c in COLUMNS if c in table.column_names]).to_batches(BATCH_ROWS)
        else:
            compressed = "gzip" if path.lower().endswith(".gz") else None
            stream = pa.CompressedInputStream(f, compressed) if compressed else f
            read = pacsv.ReadOptions(column_names=columns, block_size=1 << 24) if columns else pacsv.ReadOptions(block_size=1 << 24)
            convert = pacsv.ConvertOptions(column_types={"key": pa.string(), "bucket": pa.string(), "e_tag": pa.string()})
            for batch in pacsv.open_csv(stream, read_options=read, convert_options=convert):
                names = [_snake(n) for n in batch.schema.names]
                batch = pa.RecordBatch.from_arrays(batch.columns, names=names)
                keys = batch.column("key")
                encoded = pc.match_substring_regex(keys, r"[%+]")
                if pc.any(encoded).as_py():  # decode only keys that carry an escape
                    decoded = pa.array([unquote_plus(k) if e else k for k, e in zip(keys.to_pylist(), encoded.to_pylist())], pa.string())
                    batch = batch.set_column(names.index("key"), "key", decoded)
                yield batch


def _truthy(column: pa.Array) -> pa.Array:
    """A boolean inventory column (CSV gives 'true'/'false' strings) as booleans, nulls as false."""
    if column.type != pa.bool_():
        column = pc.equal(pc.utf8_lower(pc.cast(column, pa.string())), "true")
    return pc.fill_null(column, False)


def inventory_rows(batch: pa.RecordBatch, prefix: str, extensions: Sequence[str]) -> pa.Table:
    """ROWS of the objects in one batch of inventory rows that listing the bucket under `prefix` with
    these extensions would give: latest versions only, no delete markers."""
    keys = batch.column("key")
    keep = pc.ends_with(pc.utf8_lower(keys), extensions[0])
    for ext in extensions[1:]:
        keep = pc.or_(keep, pc.ends_with(pc.utf8_lower(keys), ext))
    if prefix:
        keep = pc.and_(keep, pc.starts_with(keys, prefix))
    names = batch.schema.names
    if "is_latest" in names:
        keep = pc.and_(keep, _truthy(batch.column("is_latest")))
    if "is_delete_marker" in names:
        keep = pc.and_(keep, pc.invert(_truthy(batch.column("is_delete_marker"))))
    kept = batch.filter(pc.fill_null(keep, False))
    n = kept.num_rows
    uri = pc.binary_join_element_wise("s3://", pc.cast(kept.column("bucket"), pa.string()), "/", pc.cast(kept.column("key"), pa.string()), "")
    etag = pc.utf8_trim(pc.cast(kept.column("e_tag"), pa.string()), '"') if "e_tag" in names else pa.nulls(n, pa.string())
    nothing = pa.nulls(n, pa.string())
    return pa.Table.from_arrays([uri, etag, pc.cast(kept.column("size"), pa.int64()), nothing, nothing, nothing], schema=ROWS)


def read_inventory_files(
    files: pa.Table, prefix: str, extensions: Sequence[str], storage_options: Optional[Mapping[str, Any]] = None
) -> Iterator[pa.Table]:
    """For `map_batches(batch_format="pyarrow")`: rows naming inventory data files in (uri, format,
    columns), ROWS out, one output batch per BATCH_ROWS inventory rows read (a generator, so a worker holds
    one batch of a file at a time)."""
    extensions = tuple(e.lower() for e in extensions)
    for spec in files.to_pylist():
        columns = json.loads(spec["columns"]) if spec["columns"] else None
        for batch in _batches(spec["uri"], spec["format"], columns, storage_options):
            rows = inventory_rows(batch, prefix, extensions)
            if rows.num_rows:
                yield rows


def read_inventory(
    uri: str, extensions: Sequence[str], prefix: str = "", storage_options: Optional[Mapping[str, Any]] = None,
    tasks: Optional[int] = None,
):
    """The inventory's objects under `prefix` with these extensions as a lazy Ray dataset of ROWS, read by
    `tasks` Ray tasks (default: one per data file), each reading its share of the files one batch at a time."""
    import ray

    files = inventory_files(uri, storage_options)
    specs = [{**f, "columns": json.dumps(f["columns"]) if f["columns"] else ""} for f in files]
    return ray.data.from_items(specs, override_num_blocks=min(len(specs), tasks or len(specs))).map_batches(
        read_inventory_files, fn_kwargs=dict(prefix=prefix, extensions=list(extensions), storage_options=storage_options),
        batch_size=1, batch_format="pyarrow",
    )

