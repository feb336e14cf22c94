"""Reading the output tables back: pyarrow datasets and a DuckDB connection with one view per table.

    from pipeline.tables import read_table, duckdb_connect
    answers = read_table("s3://bucket/qa", "answers")            # pyarrow.Table, with the `date` column
    con = duckdb_connect("s3://bucket/qa")                        # views: answers, errors, runs
    con.sql("SELECT model, avg(tokens_kept / tokens_total) FROM answers GROUP BY model").show()

DuckDB reads S3 here through the same fsspec/s3fs filesystem (`register_filesystem`), which works
offline; with internet access `INSTALL httpfs; LOAD httpfs;` and DuckDB's own S3 settings work too.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import pyarrow as pa
import pyarrow.dataset as pads

from pipeline.schema import TABLES
from pipeline.storage import arrow_filesystem, filesystem, is_local, join, to_uri

PARTITIONING = pads.partitioning(pa.schema([("date", pa.string())]), flavor="hive")


def read_table(output_uri: str, name: str, storage_options: Optional[Mapping[str, Any]] = None) -> pa.Table:
    """One output table (answers, errors or runs) across all run dates; empty (with schema) if none yet."""
    schema = TABLES[name]
    fs, root = filesystem(output_uri, storage_options)
    fs.invalidate_cache()  # files may have been rewritten since this process last looked (s3fs caches ETags)
    path = join(root, name)
    full_schema = pa.schema([*schema, pa.field("date", pa.string())])
    if not fs.exists(path):
        return full_schema.empty_table()
    dataset = pads.dataset(
        path, filesystem=arrow_filesystem(fs), format="parquet", partitioning=PARTITIONING,
        schema=full_schema, exclude_invalid_files=False,
    )
    return dataset.to_table()


def table_glob(output_uri: str, name: str) -> str:
    """The glob DuckDB, Polars or pandas read a table with, e.g. s3://bucket/qa/answers/**/*.parquet."""
    fs, root = filesystem(output_uri)
    return join(to_uri(fs, root) if not is_local(output_uri) else root, name, "**", "*.parquet")


def duckdb_connect(output_uri: str, storage_options: Optional[Mapping[str, Any]] = None):
    """A DuckDB connection with views answers, errors and runs (those that have files)."""
    import duckdb

    con = duckdb.connect()
    fs, root = filesystem(output_uri, storage_options)
    fs.invalidate_cache()
    if not is_local(output_uri):
        con.register_filesystem(fs)
    for name in TABLES:
        if fs.exists(join(root, name)) and fs.glob(join(root, name, "*", "*.parquet")):
            con.execute(
                f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{table_glob(output_uri, name)}', hive_partitioning = true)"
            )
    return con
