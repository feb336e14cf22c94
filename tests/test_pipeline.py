"""The answer and write stages in-process (no Ray): the tiny model, error rows, deterministic files,
and the output tables read back with pyarrow, DuckDB, Polars and pandas."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.answer import AnswerQuestions
from pipeline.config import validate_config
from pipeline.decode import DecodeVideos
from pipeline.listing import list_videos
from pipeline.questions import attach_questions
from pipeline.schema import ANSWERED, ANSWERS, DECODED, ERRORS, WRITE_SUMMARY, frames_of
from pipeline.tables import draw_answer_row, duckdb_connect, read_table, table_glob
from pipeline.write import WriteTables
from tiny_models import LLAVA_PATH, QWEN_PATH

QUESTIONS = ["What is happening?", "What colour is it?"]
CFG = validate_config(
    {
        "input": {"uri": "unused"},
        "questions": QUESTIONS,
        "model": {"name": LLAVA_PATH, "dtype": "float32", "device": "cpu", "max_new_tokens": 4},
        "sampling": {"frames": 2, "size": 336},
        "selection": {"budget": 16},
        "output": {"uri": "unused"},
    }
)


@pytest.fixture(scope="module")
def decoded(clip_dir) -> pa.Table:
    listed, _ = attach_questions(list_videos(str(clip_dir), CFG.input.extensions), QUESTIONS, None)
    return DecodeVideos(**CFG.sampling.frame_options(), timeout_s=None)(listed)


@pytest.fixture(scope="module")
def answer_stage(flashvlm_cache) -> AnswerQuestions:
    return AnswerQuestions(
        model=CFG.model.model_dump(), selection=CFG.selection.model_dump(),
        selection_options=CFG.selection.library_options(), frame_size=CFG.sampling.size,
        run_id="run-a", settings_id=CFG.settings_id(),
    )


@pytest.fixture(scope="module")
def answered(answer_stage, decoded) -> pa.Table:
    return answer_stage(decoded)


def test_one_row_per_question_and_one_per_failed_video(decoded, answered):
    assert answered.schema == ANSWERED
    ok = [r for r in decoded.to_pylist() if r["error"] is None]
    failed = [r for r in decoded.to_pylist() if r["error"] is not None]
    assert ok and failed
    rows = answered.to_pylist()
    answers = [r for r in rows if r["error"] is None]
    assert len(answers) == len(ok) * len(QUESTIONS)
    assert sorted(r["video_uri"] for r in rows if r["error"] is not None) == sorted(r["video_uri"] for r in failed)


def test_answer_rows_carry_tokens_kept_indices_and_video_metadata(answered):
    for row in (r for r in answered.to_pylist() if r["error"] is None):
        assert isinstance(row["answer"], str) and row["question"] == QUESTIONS[row["question_index"]]
        assert row["frames"] == 2 and len(row["kept"]) == 2 and row["frame_size"] == 336
        assert row["tokens_kept"] == sum(len(k) for k in row["kept"]) == 2 * 16  # budget per frame
        assert row["tokens_total"] == 2 * 576  # LLaVA-1.5 at 336 px: 24 x 24 tokens per frame
        # the clip keeps budget * frames tokens; a frame may keep more or fewer than budget (even none)
        assert all(k == sorted(k) and all(0 <= i < 576 for i in k) for k in row["kept"])
        assert row["model"] == LLAVA_PATH and row["budget"] == 16 and row["latency_ms"] > 0
        assert row["width"] > 0 and row["fps"] > 0 and row["run_id"] == "run-a" and row["created_at"] is not None


def test_a_model_error_on_one_video_spares_the_rest_of_the_batch(answer_stage, decoded):
    good = [r for r in decoded.to_pylist() if r["error"] is None][:2]
    bad = dict(good[0], video_uri="file:///bad.mp4", frames=bytes(2 * 8 * 8), frames_shape=[2, 8, 8, 1])  # 1 channel
    out = answer_stage(pa.Table.from_pylist([good[0], bad, good[1]], schema=DECODED)).to_pylist()
    errors = [r for r in out if r["error"] is not None]
    assert len(errors) == 1 and errors[0]["video_uri"] == "file:///bad.mp4" and errors[0]["error_stage"] == "answer"
    assert len(out) == 1 + 2 * len(QUESTIONS)


def test_split_refused_clearly_when_wrap_cannot_take_it():
    def wrap(model, budget=None, *, config=None, guide="question"):
        pass

    assert AnswerQuestions._video_options(wrap, {"split": None}) == {}
    with pytest.raises(ValueError, match="selection.split"):
        AnswerQuestions._video_options(wrap, {"split": "global"})

    def wrap_kw(model, budget=None, **options):
        pass

    assert AnswerQuestions._video_options(wrap_kw, {"split": "global", "min_per_frame": 2}) == {"split": "global", "min_per_frame": 2}


# ---- writing -----------------------------------------------------------------------------------------


def write(answered, out, run_id="run-a"):
    return WriteTables(str(out), None, run_id, "2026-01-02")(answered).to_pylist()[0]


def test_writer_splits_tables_and_summarises(answered, tmp_path):
    summary = write(answered, tmp_path)
    failed = answered.filter(pc.is_valid(answered.column("error")))
    assert summary["answers"] == answered.num_rows - failed.num_rows
    assert summary["errors"] == summary["videos_failed"] == failed.num_rows
    assert summary["videos_ok"] * len(QUESTIONS) == summary["answers"]
    assert summary["tokens_kept"] == summary["answers"] * 32 and summary["frames_decoded"] == summary["videos_ok"] * 2
    assert set(summary) == set(WRITE_SUMMARY.names)
    answers = read_table(str(tmp_path), "answers")
    errors = read_table(str(tmp_path), "errors")
    assert answers.num_rows == summary["answers"] and errors.num_rows == summary["errors"]
    assert answers.schema.remove(answers.schema.get_field_index("date")).equals(ANSWERS)
    assert set(answers.column("date").to_pylist()) == {"2026-01-02"}
    assert errors.select(ERRORS.names).schema.equals(ERRORS)
    assert set(errors.column("stage").to_pylist()) <= {"list", "read", "decode", "answer"}


def test_a_retry_overwrites_its_own_files(answered, tmp_path):
    summary = write(answered, tmp_path)
    first = summary["files"]
    again = write(answered, tmp_path)["files"]
    assert first == again and all(f.startswith(str(tmp_path)) for f in first)
    assert all("/date=2026-01-02/run-a-" in f for f in first)
    assert len(list(tmp_path.rglob("*.parquet"))) == 2 and not list(tmp_path.rglob("*.tmp"))
    assert read_table(str(tmp_path), "answers").num_rows == summary["answers"]  # not twice
    other = write(answered.slice(0, 2), tmp_path)["files"]  # other rows: another file, same run
    assert set(other).isdisjoint(first)


def test_an_answers_row_is_drawn_from_the_table_alone(decoded, answered, tmp_path):
    from flashvlm.viz import CAPTION_HEIGHT, PRUNED_BRIGHTNESS

    write(answered, tmp_path)
    row = read_table(str(tmp_path), "answers").to_pylist()[0]
    image = np.asarray(draw_answer_row(row))  # the row's video read and decoded again, at its frame_size
    assert image.shape == (CAPTION_HEIGHT + 336, 2 * 336, 3)
    t = next(t for t, kept in enumerate(row["kept"]) if kept)
    frame = frames_of(next(r for r in decoded.to_pylist() if r["video_uri"] == row["video_uri"]))[t]
    tile = image[CAPTION_HEIGHT:, t * 336 : (t + 1) * 336]

    def inside(index):  # a token's 14 px cell without its 1 px outline
        r, c = divmod(index, 24)
        return slice(r * 14 + 1, r * 14 + 13), slice(c * 14 + 1, c * 14 + 13)

    kept, pruned = row["kept"][t][0], min(set(range(576)) - set(row["kept"][t]))
    assert np.array_equal(tile[inside(kept)], frame[inside(kept)])  # the frames the model saw, kept ones as they are
    assert np.array_equal(tile[inside(pruned)], (frame[inside(pruned)] * PRUNED_BRIGHTNESS).astype(np.uint8))


def test_readme_queries_run_as_written(answered, tmp_path):
    write(answered, tmp_path)
    out = str(tmp_path)
    con = duckdb_connect(out)
    per_video = con.sql(
        "SELECT video_uri, count(*) AS answers, sum(tokens_kept) / sum(tokens_total) AS kept_share "
        "FROM answers GROUP BY video_uri ORDER BY video_uri"
    ).fetchall()
    assert per_video and all(n == len(QUESTIONS) for _, n, _ in per_video)
    assert con.sql("SELECT count(*) FROM errors").fetchall()[0][0] >= 1

    import duckdb

    glob = table_glob(out, "answers")
    assert glob == f"{out}/answers/**/*.parquet"
    one_liner = duckdb.sql(
        f"SELECT video_uri, question, answer, tokens_kept, tokens_total FROM read_parquet('{glob}', hive_partitioning=true)"
    ).fetchall()
    assert len(one_liner) == sum(n for _, n, _ in per_video)

    import polars as pl

    df = pl.scan_parquet(f"{out}/answers/**/*.parquet", hive_partitioning=True).group_by("date").agg(
        pl.len().alias("answers"), (pl.col("tokens_kept").sum() / pl.col("tokens_total").sum()).alias("kept_share")
    ).collect()
    assert df["answers"].sum() == len(one_liner) and [str(d) for d in df["date"].to_list()] == ["2026-01-02"]

    import pandas as pd

    errors = pd.read_parquet(f"{out}/errors")
    assert {"video_uri", "stage", "error_type", "error", "date"} <= set(errors.columns)
    answers = pd.read_parquet(f"{out}/answers", columns=["video_uri", "question", "answer", "kept"])
    assert len(answers) == len(one_liner) and len(answers["kept"].iloc[0]) == 2


def test_the_qwen_adapter_through_the_answer_stage_with_a_split(flashvlm_cache, decoded):
    cfg = validate_config(
        {**CFG.model_dump(), "model": {**CFG.model.model_dump(), "name": QWEN_PATH},
         "sampling": {"frames": 2, "size": 112}, "selection": {"budget": 8, "split": "per_frame"}}
    )
    listed = decoded.filter(pa.compute.is_null(decoded.column("error"))).slice(0, 1).select(
        ["video_uri", "video_version", "video_size", "questions", "error_stage", "error_type", "error"]
    )
    small = DecodeVideos(**cfg.sampling.frame_options(), timeout_s=None)(listed)
    stage = AnswerQuestions(
        model=cfg.model.model_dump(), selection=cfg.selection.model_dump(),
        selection_options=cfg.selection.library_options(), frame_size=112, run_id="q", settings_id=cfg.settings_id(),
    )
    rows = stage(small).to_pylist()
    assert len(rows) == len(QUESTIONS) and all(r["error"] is None for r in rows), rows[0]["error"]
    for row in rows:
        assert row["tokens_kept"] == sum(len(k) for k in row["kept"]) < row["tokens_total"]
