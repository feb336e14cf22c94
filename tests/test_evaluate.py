"""The evaluation: scoring rules, the labels file's checks, the adapter's feature reuse and multiple-choice
likelihoods on the tiny random LLaVA, and (slow, Ray) jobs/evaluate.py on generated shapes clips plus a
broken video (tiny LLaVA; tiny Qwen2.5-VL on one clip), and the main job's expected/correct columns over
labelled clips."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.eval_actor import choice_index
from pipeline.eval_labels import LabelsFileError, read_labels
from pipeline.evaluate import summarize
from pipeline.schema import EVALUATIONS
from pipeline.scoring import agrees, is_correct, normalize_answer, object_recall
from tiny_models import LLAVA_PATH, QWEN_PATH

ROOT = Path(__file__).resolve().parents[1]


def run_evaluate(*args: str) -> subprocess.CompletedProcess:
    """jobs/evaluate.py in a fresh process, as a user runs it (no Ray address: a new local Ray if any)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "evaluate.py"), *args], env=env, capture_output=True,
                          text=True, timeout=400)


# --------------------------------------------------------------------------------------------------
# Scoring rules
# --------------------------------------------------------------------------------------------------


def test_normalize_answer_drops_case_punctuation_and_whitespace():
    assert normalize_answer("  Red! ") == "red"
    assert normalize_answer("Left side.") == "leftside"
    assert normalize_answer("“Yes,”\tplease") == "yesplease"
    assert normalize_answer(None) == ""
    with pytest.raises(ValueError, match="answer text"):
        normalize_answer(3)


def test_is_correct_and_agreement():
    assert is_correct("Blue.", "blue") is True
    assert is_correct("blue green", "blue") is False
    assert is_correct("anything", None) is None  # unlabelled: no verdict
    assert agrees("Up!", "up") is True and agrees("up", "down") is False and agrees("x", None) is None


def test_object_recall_is_the_share_of_the_objects_patches_kept():
    kept = [[0, 1, 2], [5]]  # frame 0 keeps 0, 1, 2; frame 1 keeps 5
    assert object_recall(kept, [[0, 1], [0, 3], [1, 5], [1, 6]]) == 0.5
    assert object_recall(kept, [[2, 0]]) == 0.0  # a frame the clip does not have: not kept
    assert object_recall(kept, None) is None and object_recall(kept, []) is None


def test_choice_index_reads_option_text_or_letter():
    choices = ["A. red ball", "B. blue cube", "C. green cone"]
    assert choice_index("B", choices) == 1
    assert choice_index("c.", choices) == 2
    assert choice_index("B. Blue cube", choices) == 1
    assert choice_index("D", choices) is None and choice_index(None, choices) is None
    assert choice_index("yes", ["no", "yes"]) == 1


def test_summary_retention_is_accuracy_over_the_full_budgets():
    def row(method, budget, correct, agree):
        row.item += 1
        return {"method": method, "options": "{}", "budget": budget, "item": row.item, "question_type": "t", "correct": correct,
                "agrees_with_full": agree, "object_recall": None, "latency_ms": 10.0, "tokens_kept": 4, "frames": 1,
                "error": None}

    row.item = 0
    rows = [row("full", None, True, True), row("full", None, False, True),
            row("random", 8, True, False), row("random", 8, False, True), row("random", 8, None, None)]
    full, rand = summarize(rows)
    assert full["accuracy"] == 0.5 and full["retention"] == 1.0 and full["agreement"] == 1.0
    assert rand["accuracy"] == 0.5 and rand["retention"] == 1.0 and rand["agreement"] == 0.5 and rand["items"] == 3


# --------------------------------------------------------------------------------------------------
# The labels file
# --------------------------------------------------------------------------------------------------


def test_labels_file_errors_name_the_file_and_the_row(tmp_path):
    good = {"video_uri": "a.mp4", "question": "What colour?", "answer": "red", "object_patches": [[0, 3]]}
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(LabelsFileError, match=r"labels file .*labels.jsonl, row 2: not valid JSON"):
        read_labels(str(path))
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "object_patches": [[0, "x"]]}) + "\n")
    with pytest.raises(LabelsFileError, match=r"labels.jsonl, row 2: object_patches must be"):
        read_labels(str(path))
    path.write_text(json.dumps({**good, "choices": ["only one"]}) + "\n")
    with pytest.raises(LabelsFileError, match=r"row 1: choices must be"):
        read_labels(str(path))
    path.write_text(json.dumps({"video_uri": "a.mp4"}) + "\n")
    with pytest.raises(LabelsFileError, match=r"row 1: question must be a non-empty string"):
        read_labels(str(path))
    for bad in ({"start_s": 4.0}, {"start_s": 4.0, "end_s": 2.0}, {"start_s": -1, "end_s": 2}, {"start_s": "0", "end_s": 2}):
        path.write_text(json.dumps(good) + "\n" + json.dumps({**good, **bad}) + "\n")
        with pytest.raises(LabelsFileError, match=r"row 2: start_s and end_s must both be set"):
            read_labels(str(path))
    path.write_text(json.dumps({**good, "answer": 3, "start_s": 2, "end_s": 4.5}) + "\n")
    item = read_labels(str(path))[0]
    assert item["expected"] == "3" and (item["start_s"], item["end_s"]) == (2.0, 4.5)  # a count label written as a number


def test_evaluate_job_refuses_a_malformed_labels_file_before_it_runs(tmp_path):
    (tmp_path / "videos").mkdir()
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"video_uri": "a.mp4", "question": "Q?"}) + "\n" + json.dumps({"video_uri": "a.mp4"}) + "\n")
    done = run_evaluate("--set", f"input.uri={tmp_path / 'videos'}", "--set", f"questions_file={labels}",
                        "--set", f"output.uri={tmp_path / 'out'}", "--set", "input.generate_shapes=null")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"labels file {labels}, row 2: question must be a non-empty string")
    assert not (tmp_path / "out" / "evaluations").exists()


# --------------------------------------------------------------------------------------------------
# The adapter: features once, settings per call, multiple choice by likelihood
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter(flashvlm_cache, one_thread):
    import flashvlm

    model, processor = flashvlm.load(LLAVA_PATH, dtype=torch.float32, device="cpu")
    return flashvlm.wrap(model, 16, processor=processor)


@pytest.fixture(scope="module")
def clip():
    from shapes.clips import render, sample_clip

    return render(sample_clip(7, frames=2))  # (2, 336, 336, 3)


def test_answer_features_reuses_features_at_any_setting(adapter, clip):
    questions = ["What colour is the star?", "Is there a red circle?"]
    direct = adapter.answer_video(clip, questions, max_new_tokens=3)
    features = adapter.encode_video(clip)
    again = adapter.answer_features(features, questions, max_new_tokens=3, budget=16, method="flashvlm")
    assert [a.text for a in again] == [a.text for a in direct] and [a.kept for a in again] == [a.kept for a in direct]
    for method in ("saliency", "diversity", "uniform", "random"):
        out = adapter.answer_features(features, questions, max_new_tokens=2, budget=16, method=method)
        assert all(a.tokens_kept == 32 and a.tokens_total == 2 * 576 for a in out)
    full = adapter.answer_features(features, questions, max_new_tokens=2, budget=None)
    assert all(a.tokens_kept == a.tokens_total == 2 * 576 for a in full)
    with pytest.raises(ValueError, match="has no option 'seed'"):
        adapter.answer_features(features, questions, budget=16, method="uniform", options={"seed": 1})


def test_text_weighting_option_reaches_the_clip_selection(adapter, clip):
    from flashvlm import SelectionConfig, select_video_tokens

    features = adapter.encode_video(clip)
    questions = ["What colour is the star?", "Is there a red circle?"]
    norm = adapter.answer_features(features, questions, max_new_tokens=1, budget=16, options={"text_weighting": "norm"})
    plain = adapter.answer_features(features, questions, max_new_tokens=1, budget=16)
    for answer, question in zip(norm, questions):
        ids = adapter.tokenizer(question, add_special_tokens=False, return_tensors="pt")["input_ids"]
        text = adapter.model.get_input_embeddings()(ids)  # (1, L, D)
        expected = select_video_tokens(features.vision[None], features.projected[None], features.saliency[None], text, 32,
                                       config=SelectionConfig(text_weighting="norm"))
        assert [t * 576 + i for t, kept in enumerate(answer.kept) for i in kept] == expected[0].tolist()
    assert [a.kept for a in norm] != [a.kept for a in plain]
    with pytest.raises(ValueError, match="text_weighting must be one of"):
        adapter.answer_features(features, questions, budget=16, options={"text_weighting": "idf"})


def test_evaluation_settings_sweep_text_weighting_for_flashvlm_only():
    from pipeline.config import ConfigError
    from pipeline.eval_config import DEFAULT_CONFIG, grid_of, load_eval_config

    cfg = load_eval_config(DEFAULT_CONFIG)
    weighted = [s for s in cfg.evaluation.settings if s.options.get("text_weighting") == "norm"]
    assert [s.method for s in weighted] == ["flashvlm"]  # the demo measures none (default) against norm
    grid = grid_of(cfg)
    norm = [g for g in grid if g["options"] == {"text_weighting": "norm"}]
    plain = [g for g in grid if g["method"] == "flashvlm" and g["options"] == {}]
    assert [g["budget"] for g in norm] == [g["budget"] for g in plain] == [b for b in cfg.evaluation.budgets if b]
    assert {g["settings_id"] for g in norm}.isdisjoint(g["settings_id"] for g in plain)
    with pytest.raises(ConfigError, match=r"evaluation\.settings\.0\.options: .*text_weighting must be one of"):
        load_eval_config(DEFAULT_CONFIG, ["evaluation.settings=[{method: flashvlm, options: {text_weighting: foo}}]"])
    with pytest.raises(ConfigError, match=r"evaluation\.settings\.0\.options: method 'saliency' takes no text_weighting"):
        load_eval_config(DEFAULT_CONFIG, ["evaluation.settings=[{method: saliency, options: {text_weighting: norm}}]"])


def test_evaluation_settings_take_every_video_split_and_check_it():
    from pipeline.config import ConfigError
    from pipeline.eval_config import DEFAULT_CONFIG, grid_of, load_eval_config

    settings = "evaluation.settings=[" + ", ".join(
        f"{{method: flashvlm, options: {{split: {s}}}}}" for s in ("per_frame", "global", "frame_by_frame")) + "]"
    cfg = load_eval_config(DEFAULT_CONFIG, [settings])
    ids = {g["options"]["split"]: g["settings_id"] for g in grid_of(cfg) if g["budget"] == 64}
    assert len(set(ids.values())) == 3  # three settings, three ids
    for bad, match in (("{split: clip}", "split must be one of"), ("{split: frame_by_frame, min_per_frame: 1}", 'split "global" only')):
        with pytest.raises(ConfigError, match=r"evaluation\.settings\.0\.options: .*" + match):
            load_eval_config(DEFAULT_CONFIG, [f"evaluation.settings=[{{method: flashvlm, options: {bad}}}]"])


def _stage_and_row(clip_frames, settings):
    """A fresh evaluation stage (the model loaded anew, as a second run loads it) on the tiny LLaVA at the full
    budget and 16, and one decoded row of `clip_frames` with its items: a clip's questions plus one asked twice."""
    from pipeline.eval_actor import EvaluateVideos
    from pipeline.eval_config import DEFAULT_CONFIG, grid_of, load_eval_config
    from pipeline.storage import normalize_uri
    from shapes.clips import questions, sample_clip

    uri = normalize_uri("/clips/a.mp4")
    cfg = load_eval_config(DEFAULT_CONFIG, [f"model.name={LLAVA_PATH}", "evaluation.budgets=[null, 16]",
                                            f"evaluation.settings={settings}"])
    asked = questions(sample_clip(7, frames=2))[:4]
    items = [{"video_uri": uri, "question": q.question, "expected": q.answer, "choices": None,
              "question_type": q.question_type, "object_patches": [list(p) for p in q.object_patches] or None, "item": i}
             for i, q in enumerate(asked + asked[:1])]
    stage = EvaluateVideos(cfg.model.model_dump(), cfg.selection.model_dump(), cfg.selection.library_options(),
                           {uri: items}, grid_of(cfg), "run")
    row = {"video_uri": uri, "video_version": "1", "decode_ms": 1.0, "error": None,
           "frames": clip_frames.tobytes(), "frames_shape": list(clip_frames.shape)}
    return stage, row, items


def test_two_runs_write_the_same_answers_and_kept_tokens(flashvlm_cache, one_thread, clip):
    settings = "[{method: flashvlm}, {method: saliency}, {method: diversity}, {method: uniform}, {method: random}]"
    runs = []
    for _ in range(2):
        stage, row, items = _stage_and_row(clip, settings)
        features = stage.adapter.encode_video(clip)
        kept = [[r["answer"].kept for r in stage._answers(features, items, s)] for s in stage.grid]
        runs.append((stage.evaluate_one(row), kept))
    (first, kept_first), (second, kept_second) = runs
    columns = ("item", "method", "options", "budget", "answer", "tokens_kept", "object_recall", "correct")
    assert len(first) == len(items) * (1 + 4 + 5)  # full, 4 methods and random at its 5 seeds, at 16
    assert [tuple(r[c] for c in columns) for r in first] == [tuple(r[c] for c in columns) for r in second]
    assert kept_first == kept_second


def test_random_draws_per_item_and_its_seeds_are_one_line(flashvlm_cache, one_thread, clip):
    from pipeline.eval_actor import item_seeds
    from pipeline.eval_config import DEFAULT_CONFIG, grid_of, load_eval_config

    stage, row, items = _stage_and_row(clip, "[{method: random, options: {seed: 3}}]")
    features = stage.adapter.encode_video(clip)
    setting = stage.grid[1]
    assert setting["options"] == {"seed": 3}  # a seed of its own: that one only
    kept = [r["answer"].kept for r in stage._answers(features, items, setting)]
    assert len({str(k) for k in kept}) == len(items), "every item draws its own tokens, the repeated question too"
    assert kept == [r["answer"].kept for r in stage._answers(features, items, setting)]
    assert item_seeds(setting, items) == item_seeds(setting, items) and item_seeds(stage.grid[0], items) is None
    # Without a seed: one setting per evaluation.random_seeds, summarized as one line, the mean over them.
    cfg = load_eval_config(DEFAULT_CONFIG, ["evaluation.random_seeds=[0, 7]"])
    seeds = [g["options"]["seed"] for g in grid_of(cfg) if g["method"] == "random" and g["budget"] == 16]
    assert seeds == [0, 7]
    rows = [{"method": "random", "options": json.dumps({"seed": s}), "budget": 16, "item": i, "question_type": "t",
             "correct": c, "agrees_with_full": c, "object_recall": None, "latency_ms": 1.0, "tokens_kept": 4, "frames": 1,
             "error": None} for s, cs in ((0, [True, True]), (7, [False, True])) for i, c in enumerate(cs)]
    (line,) = summarize(rows)
    assert line["options"] == {} and line["items"] == 2 and line["accuracy"] == 0.75


def test_score_choices_is_the_sum_of_option_token_log_probs(adapter, clip):
    """Worked by hand at full budget: the model's own forward over prompt + option, unpruned, and the
    log-probabilities of the option's tokens summed; the pick is the option with the highest sum."""
    features = adapter.encode_video(clip)
    question, choices = "What colour is the star?", ["red", "blue green", "up"]
    scores, best = adapter.score_choices(features, question, choices, budget=None)
    prompt, _ = adapter.video_prompts([question], frames=2)  # (1, S)
    pixel_values = adapter.pixel_values(clip)
    for choice, score in zip(choices, scores):
        option = adapter.tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
        ids = torch.cat([prompt[0], torch.tensor(option)])[None]  # (1, S + n)
        with torch.no_grad():
            logits = adapter.model(input_ids=ids, pixel_values=pixel_values).logits[0].float()
        logprobs = logits.log_softmax(-1)
        S = prompt.shape[1]
        by_hand = sum(float(logprobs[S - 1 + i, t]) for i, t in enumerate(option))
        assert math.isclose(score, by_hand, rel_tol=1e-4, abs_tol=1e-3), (choice, score, by_hand)
    assert best.text == choices[int(np.argmax(scores))]
    pruned, kept = adapter.score_choices(features, question, choices, budget=8, method="uniform")
    assert kept.tokens_kept == 16 and len(pruned) == 3
    with pytest.raises(ValueError, match="choices must be"):
        adapter.score_choices(features, question, [])


# --------------------------------------------------------------------------------------------------
# The job (Ray)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_split(tmp_path_factory):
    """2 labelled shapes clips, plus a broken one with a labelled question."""
    from shapes.clips import write_split

    folder = tmp_path_factory.mktemp("shapes")
    labels = write_split(folder, "test", 2, frames=2)
    (folder / "test" / "broken.mp4").write_bytes(b"not a video")
    with labels.open("a") as f:
        f.write(json.dumps({"video_uri": "broken.mp4", "question": "What colour is the star?", "answer": "red"}) + "\n")
    return folder / "test"


@pytest.mark.slow
def test_jobs_evaluate_writes_the_table_the_plot_and_the_json_line(flashvlm_cache, shapes_split, tmp_path):
    out_uri = tmp_path / "out"
    done = run_evaluate(*[
        "--set", f"model.name={LLAVA_PATH}", "--set", f"input.uri={shapes_split}",
        "--set", f"questions_file={shapes_split / 'questions.jsonl'}", "--set", f"output.uri={out_uri}",
        "--set", "sampling.frames=2", "--set", "evaluation.budgets=[null, 16]", "--set", "input.generate_shapes=null",
        "--set", "evaluation.settings=[{method: flashvlm}, {method: random, options: {seed: 1}}]",
    ])
    printed = done.stdout
    assert done.returncode == 0, done.stderr
    summary = json.loads(printed.strip().splitlines()[-1])
    labels = [json.loads(line) for line in (shapes_split / "questions.jsonl").read_text().splitlines()]
    assert summary["model"] == LLAVA_PATH and summary["items"] == len(labels)
    assert [(r["method"], r["budget"]) for r in summary["results"]] == [("full", None), ("flashvlm", 16), ("random", 16)]
    assert set(summary["results"][0]) == {"method", "budget", "options", "accuracy", "accuracy_without_near_chance",
                                          "retention", "agreement", "object_recall", "ms_per_answer", "vs_flashvlm"}
    assert summary["results"][0]["vs_flashvlm"] is None and summary["results"][1]["vs_flashvlm"] is None  # full, flashvlm
    vs = summary["results"][2]["vs_flashvlm"]  # random against flashvlm at 16
    assert set(vs) == {"diff", "ci_low", "ci_high", "p"} and vs["ci_low"] <= vs["diff"] <= vs["ci_high"] and 0 < vs["p"] <= 1
    assert vs["diff"] == pytest.approx(summary["results"][2]["accuracy"] - summary["results"][1]["accuracy"])
    assert summary["results"][0]["agreement"] == 1.0 and summary["results"][0]["object_recall"] == 1.0
    assert "per question type" in printed

    files = list((out_uri / "evaluations").glob("date=*/*.parquet"))
    assert len(files) == 1
    table = pq.read_table(files[0])
    assert table.schema.equals(EVALUATIONS, check_metadata=False)
    rows = table.to_pylist()
    errors = [r for r in rows if r["error"] is not None]
    assert len(errors) == 1 and errors[0]["video_uri"].endswith("broken.mp4") and errors[0]["error_stage"] in ("read", "decode")
    scored = [r for r in rows if r["error"] is None]
    assert len(scored) == 3 * (len(labels) - 1)  # every good item at 3 settings
    assert all(r["correct"] is not None and r["expected"] is not None for r in scored)
    assert all(r["tokens_kept"] == (r["tokens_total"] if r["budget"] is None else 16 * 2) for r in scored)
    assert all(json.loads(r["options"]) == ({"seed": 1} if r["method"] == "random" else {}) for r in scored)
    with_patches = {(l["video_uri"], l["question"]) for l in labels if l.get("object_patches")}
    for r in scored:
        if (r["video_uri"].rsplit("/", 1)[-1], r["question"]) in with_patches:
            assert 0.0 <= r["object_recall"] <= 1.0 and (r["budget"] is not None or r["object_recall"] == 1.0)
        else:
            assert r["object_recall"] is None
    plot = next(line for line in printed.splitlines() if line.startswith("plot: ")).removeprefix("plot: ")
    assert Path(plot).is_file() and Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = list((out_uri / "runs").glob("date=*/*.parquet"))
    assert len(runs) == 1 and pq.read_table(runs[0]).column("status").to_pylist() == ["succeeded"]


@pytest.mark.slow
def test_jobs_evaluate_with_the_tiny_qwen_and_two_methods(flashvlm_cache, tmp_path):
    """Any model flashvlm.load takes: Qwen2.5-VL, whose "frames" are temporal patches of merged tokens, on one
    clip with an open and a multiple-choice question, two methods at one budget besides the full one."""
    from shapes.clips import write_split

    split = write_split(tmp_path / "shapes", "test", 1, frames=2).parent
    labels = split / "labels.jsonl"
    labels.write_text(
        json.dumps({"video_uri": "clip_00000.mp4", "question": "What colour is the star?", "answer": "red"}) + "\n"
        + json.dumps({"video_uri": "clip_00000.mp4", "question": "Which shape moves?", "choices": ["A. star", "B. circle"],
                      "answer": "A"}) + "\n"
    )
    out_uri = tmp_path / "out"
    done = run_evaluate(*[
        "--set", f"model.name={QWEN_PATH}", "--set", f"input.uri={split}", "--set", f"questions_file={labels}",
        "--set", f"output.uri={out_uri}", "--set", "sampling.frames=2", "--set", "sampling.size=112",
        "--set", "evaluation.budgets=[null, 4]", "--set", "input.generate_shapes=null",
        "--set", "evaluation.settings=[{method: uniform}, {method: random, options: {seed: 1}}]",
    ])
    printed = done.stdout
    assert done.returncode == 0, done.stderr
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["model"] == QWEN_PATH and summary["items"] == 2
    assert [(r["method"], r["budget"]) for r in summary["results"]] == [("full", None), ("uniform", 4), ("random", 4)]
    assert summary["results"][0]["agreement"] == 1.0
    rows = pq.read_table(next((out_uri / "evaluations").glob("date=*/*.parquet"))).to_pylist()
    assert len(rows) == 2 * 3 and all(r["error"] is None for r in rows), [r["error"] for r in rows]
    for r in rows:  # 2 frames: one temporal patch of 4 x 4 merged tokens at 112 px
        assert r["frames"] == 1 and r["tokens_total"] == 16
        assert r["tokens_kept"] == (16 if r["budget"] is None else 4)
        assert r["correct"] is not None and (r["choice_scores"] is None) == (r["choices"] is None)
    assert Path(next(l for l in printed.splitlines() if l.startswith("plot: ")).removeprefix("plot: ")).is_file()


@pytest.mark.slow
def test_answers_table_carries_expected_and_correct(ray_local, flashvlm_cache, shapes_split, tmp_path):
    from pipeline.config import load_config
    from pipeline.run import run, summary_text
    from pipeline.tables import read_table

    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        f"input.uri={shapes_split}", f"questions_file={shapes_split / 'questions.jsonl'}", "questions=[]",
        f"output.uri={tmp_path / 'out'}", "sampling.frames=2", "input.generate_if_missing=0",
        "input.generate_shapes=null", "input.extra_uris=[]",
    ])
    record = run(cfg)
    answers = read_table(str(tmp_path / "out"), "answers").to_pylist()
    right = sum(row["correct"] for row in answers)
    assert (record.answers_labelled, record.answers_correct) == (len(answers), right)
    assert f"accuracy on labelled questions: {right} of {len(answers)} (" in summary_text(cfg, record)
    labels = {(l["video_uri"], l["question"]): l["answer"] for l in map(json.loads, (shapes_split / "questions.jsonl").read_text().splitlines())}
    assert len(answers) == len(labels) - 1  # the broken clip is an error row
    for row in answers:
        expected = labels[(row["video_uri"].rsplit("/", 1)[-1], row["question"])]
        assert row["expected"] == expected
        assert row["correct"] == (normalize_answer(row["answer"]) == normalize_answer(expected))


# --------------------------------------------------------------------------------------------------
# selection.method in the main job's config
# --------------------------------------------------------------------------------------------------


def test_selection_method_in_the_job_config_reaches_the_adapter(flashvlm_cache, one_thread, clip):
    from pipeline.answer import load_adapter
    from pipeline.config import ConfigError, load_config

    demo = ROOT / "configs" / "demo.yaml"
    cfg = load_config(demo, ["selection.method=random", "selection.method_options={seed: 3}", "selection.budget=8"])
    adapter = load_adapter(cfg.model.model_dump(), cfg.selection.model_dump(), cfg.selection.library_options())
    assert adapter.method == "random" and adapter.method_options == {"seed": 3}
    first = adapter.answer_video(clip, ["Is there a red circle?"], max_new_tokens=1)[0]
    features = adapter.encode_video(clip)
    same = adapter.answer_features(features, ["Is there a red circle?"], max_new_tokens=1, budget=8, method="random",
                                   options={"seed": 3})[0]
    assert first.kept == same.kept and first.tokens_kept == 16
    with pytest.raises(ConfigError, match=r"selection.method_options: method 'uniform' has no option 'seed'"):
        load_config(demo, ["selection.method=uniform", "selection.method_options={seed: 1}"])
    with pytest.raises(ConfigError, match=r"selection.split: method 'diversity' takes no split"):
        load_config(demo, ["selection.method=diversity", "selection.split=global"])
