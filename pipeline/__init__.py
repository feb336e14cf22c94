"""The video question-answering pipeline: Ray Data stages around FlashVLM; jobs/video_qa.py is its command line.

    run.py        the run: list, drop what is done, decode -> answer -> write, its totals and the printed summary
    lifecycle.py  the life of a run, both jobs: recover, stage, commit or roll back, the run record
                  (RunRecord), the failure policy and the one-line failure a job prints
    config.py     the job's YAML schema (pydantic) and `--set key=value` overrides
    storage.py    fsspec/s3fs filesystems, pyarrow's view of them, credential redaction, the one table-file
                  reader and the one atomic write
    schema.py     pyarrow schemas between stages and of the answers/errors/runs tables; the error text
    listing.py    stage 1: input URI -> one row per video (uri, size, version)
    questions.py  which questions each video gets (config list and/or per-video file), and its labels
    decode.py     stage 2: read through fsspec, decode with flashvlm.decode in a helper process with a timeout
    answer.py     stage 3: FlashVLM-wrapped model on a model actor pool
    write.py      stage 4: Parquet answers/errors, Hive-partitioned, deterministic names; runs record
    commit.py     all-or-nothing runs: staging folder, _COMMIT.json manifest, roll forward or back
    tables.py     reading the tables back (pyarrow, DuckDB; only committed runs: read_committed), and
                  drawing an answers row (flashvlm.viz)
    evaluate.py   the evaluation's run and summary; eval_config.py, eval_labels.py, eval_actor.py and
                  eval_plot.py its config, labels file, model stage and plot

Imports point down only: jobs/ -> pipeline/ -> shapes/ -> flashvlm/ (tests/test_layering.py checks it). Stages are
classes for `Dataset.map_batches(batch_format="pyarrow")` and never import one another; failures travel as
rows with error columns until the writer splits them into errors/.
"""
