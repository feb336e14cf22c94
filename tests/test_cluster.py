"""The job on a real multi-node Ray cluster on this machine: a head with no CPUs and two worker nodes,
each its own raylet (ray.cluster_utils.Cluster), input and output in the moto S3 server.

Work lands on both workers (the decode and the model actor do not fit on one), the run record lists the
nodes; a worker removed while its model actor holds a batch in flight (and replaced, as an autoscaler
would) costs retries, never a lost or duplicated row; a local input.uri or output.uri is refused before
anything runs.
"""

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

import pipeline.cluster
import pipeline.run
from pipeline.answer import AnswerQuestions
from pipeline.cluster import check_shared_storage
from pipeline.config import ConfigError
from pipeline.run import run
from pipeline.tables import read_table
from pipeline_fixtures import BROKEN_CLIPS, FALLBACK_CLIPS, GOOD_CLIPS, QUESTIONS, tiny_job_config

ROOT = Path(__file__).resolve().parents[1]

# decode (1 CPU) + model (2 CPUs) do not fit on one 2-CPU worker: Ray must use both.
WORKER_CPUS = 2
RAY = {"decode_actors": 1, "decode_num_cpus": 1, "model_actors": 1, "model_num_cpus": 2, "decode_batch_size": 1,
       "model_batch_size": 1, "write_batch_size": 1, "decode_timeout_s": 60}


@pytest.fixture(scope="module")
def cluster(flashvlm_cache):
    """A head (0 CPUs) and two worker nodes; raylets inherit this environment (PYTHONPATH, FLASHVLM_CACHE)."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    patch = pytest.MonkeyPatch()
    patch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    temp_dir = tempfile.mkdtemp(prefix="fvc", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # A removed node is declared dead after ~2 s of failed health checks instead of Ray's ~15 s default.
    health = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000, "health_check_failure_threshold": 2}
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "temp_dir": temp_dir, "include_dashboard": False, "_system_config": health})
    for _ in range(2):
        c.add_node(num_cpus=WORKER_CPUS)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        patch.undo()
        shutil.rmtree(temp_dir, ignore_errors=True)


def upload_clips(clip_dir: Path, s3_options: dict, bucket: str, copies: int) -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    uris = []
    for k in range(copies):
        for name in [n for n in GOOD_CLIPS + FALLBACK_CLIPS + BROKEN_CLIPS if (clip_dir / n).exists()]:
            key = f"{bucket}/in/{k}-{name}"
            fs.pipe(key, (clip_dir / name).read_bytes())
            uris.append(f"s3://{key}")
    return uris


def check_every_input_ended_once(out: str, s3_options: dict, uris: list[str], record: dict) -> None:
    answers = read_table(out, "answers", s3_options)
    errors = read_table(out, "errors", s3_options)
    keys = list(zip(answers.column("video_uri").to_pylist(), answers.column("question").to_pylist()))
    assert len(keys) == len(set(keys))  # nothing duplicated
    answered = {u for u, _ in keys}
    failed = errors.column("video_uri").to_pylist()
    assert len(failed) == len(set(failed)) and not answered & set(failed)
    assert answered | set(failed) == set(uris)  # every input ended, as answers or as one error row
    assert all(sum(1 for u, _ in keys if u == v) == len(QUESTIONS) for v in answered)
    assert (record.videos_ok, record.videos_failed) == (len(answered), len(failed))
    assert {u for u in failed if u.rsplit("-", 1)[-1] in BROKEN_CLIPS} == {u for u in uris if u.rsplit("-", 1)[-1] in BROKEN_CLIPS}


@pytest.mark.slow
@pytest.mark.timeout(600)  # a replacement node and its model actor start in minutes on a loaded 2-core machine
def test_the_job_runs_on_two_nodes_and_a_worker_removed_mid_run_loses_nothing(
    cluster, clip_dir, s3_options, s3_bucket, tmp_path, monkeypatch
):
    """One run does both: work lands on both workers, the one whose model actor is answering a video is
    removed while it does (and replaced, as an autoscaler would), and the run still ends every input
    exactly once."""
    import ray

    in_flight, released = tmp_path / "in-flight", tmp_path / "released"  # this machine's disk: every node sees it

    class AnswerHeld(AnswerQuestions):
        """The answer stage, holding its first healthy video until the test has removed a node, so that the
        node is known to have a batch in flight when it goes: `in_flight` names the node. The retried batch,
        on another node once `released` exists, is answered. Defined here, so Ray ships it by value."""

        def answer_one(self, row):
            if row.get("error") is None and not released.exists():
                try:
                    marker = os.open(in_flight, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    os.write(marker, self.node.encode())
                    os.close(marker)
                    while not released.exists():
                        time.sleep(0.1)
            return super().answer_one(row)

    monkeypatch.setattr(pipeline.run, "AnswerQuestions", AnswerHeld)
    uris = upload_clips(clip_dir, s3_options, s3_bucket, copies=1)
    out = f"s3://{s3_bucket}/out"
    cfg = tiny_job_config(f"s3://{s3_bucket}/in/", out, RAY, storage_options=s3_options, run_id="node-lost")
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(record=run(cfg)), daemon=True)
    job.start()
    while not (in_flight.exists() and in_flight.read_text()):  # a model actor holds a video
        assert job.is_alive(), "the job ended before a node was removed"
        time.sleep(0.2)
    busy = in_flight.read_text()
    (victim,) = [node for node in cluster.worker_nodes if node.node_id == busy]
    cluster.remove_node(victim)  # its raylet and every worker on it are killed, the held batch with them
    released.touch()
    cluster.add_node(num_cpus=WORKER_CPUS)  # what an autoscaler does
    job.join(timeout=280)
    assert "record" in result, "the job did not finish after losing a node"
    record = result["record"]
    workers = {n["NodeID"] for n in ray.nodes()} - {cluster.head_node.node_id}  # the removed one too
    assert len(record.nodes) >= 2 and set(record.nodes) <= workers
    assert busy not in {n.node_id for n in cluster.worker_nodes}  # the node that held the batch is gone
    assert read_table(out, "runs", s3_options).column("nodes").to_pylist() == [record.nodes]
    check_every_input_ended_once(out, s3_options, uris, record)


@pytest.mark.slow
def test_local_storage_on_a_multi_node_cluster_is_refused(cluster, tmp_path, s3_bucket, s3_options):
    for key, cfg in (
        ("input.uri", tiny_job_config(tmp_path / "in", f"s3://{s3_bucket}/o", RAY, storage_options=s3_options)),
        ("output.uri", tiny_job_config(f"s3://{s3_bucket}/in/", tmp_path / "out", RAY, storage_options=s3_options)),
    ):
        with pytest.raises(ConfigError, match=f"^{key}: .*local path.*3 nodes"):
            run(cfg)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_local_uris_are_refused_only_on_several_nodes(monkeypatch, tmp_path):
    s3 = "s3://bucket/videos/"
    monkeypatch.setattr(pipeline.cluster, "alive_nodes", lambda: 1)
    check_shared_storage(tiny_job_config(tmp_path / "in", tmp_path / "out", RAY))  # one node: a local disk is fine
    monkeypatch.setattr(pipeline.cluster, "alive_nodes", lambda: 2)
    with pytest.raises(ConfigError, match="^input.uri: .*2 nodes"):
        check_shared_storage(tiny_job_config(tmp_path / "in", "s3://bucket/out", RAY))
    with pytest.raises(ConfigError, match="^output.uri: .*2 nodes"):
        check_shared_storage(tiny_job_config(s3, f"file://{tmp_path}/out", RAY))
    check_shared_storage(tiny_job_config(s3, "s3://bucket/out", RAY))
