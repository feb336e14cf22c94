"""The video question-answering pipeline: Ray Data stages around FlashVLM (see jobs/video_qa.py).

    config.py     the job's YAML schema (pydantic) and `--set key=value` overrides
    storage.py    fsspec/s3fs filesystems, pyarrow's view of them, credential redaction
    schema.py     pyarrow schemas between stages and of the answers/errors/runs tables
    listing.py    stage 1: input URI -> one row per video (uri, size, version)
    questions.py  which questions each video gets (config list and/or per-video file)
    decode.py     stage 2: read + decode (decord, PyAV fallback, timeout) + resize
    answer.py     stage 3: FlashVLM-wrapped model on a model actor pool
    write.py      stage 4: Parquet answers/errors, Hive-partitioned, deterministic names; runs record
    tables.py     reading the tables back (pyarrow, DuckDB)
    synthetic.py  short generated clips for the demo and tests

Stages are classes for `Dataset.map_batches(batch_format="pyarrow")` and never import one another;
failures travel as rows with error columns until the writer splits them into errors/.
"""
