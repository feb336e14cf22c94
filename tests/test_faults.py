"""Faults (issue 8): a model actor killed mid-run, and the S3-compatible server unreachable for a few seconds
mid-run. Either way the run succeeds and every input ends as exactly one answer row per question or one error
row: nothing lost, nothing duplicated. The tests put each fault at a fixed point of the run (a subclass of the
answer stage, patched into pipeline.run), so no test races the pipeline for its timing."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

import pipeline.run
from pipeline.answer import AnswerQuestions
from pipeline.commit import STAGING
from pipeline.run import run
from shapes.clips import make_clip
from pipeline.tables import read_table
from pipeline_fixtures import QUESTIONS, tiny_job_config

pytestmark = pytest.mark.slow

RAY = {"decode_batch_size": 1, "model_batch_size": 1, "write_batch_size": 1, "decode_timeout_s": 30}


def config(input_uri, output_uri, **extra):
    return tiny_job_config(input_uri, output_uri, RAY, **extra)


def make_inputs(folder: Path, n: int) -> Path:
    """n healthy clips (symlinks to one generated clip: distinct URIs, one decode each) and one empty file."""
    folder.mkdir(parents=True, exist_ok=True)
    make_clip(folder / "c00.mp4", frames=6, seed=0)
    for i in range(1, n):
        os.symlink(folder / "c00.mp4", folder / f"c{i:02d}.mp4")
    (folder / "empty.mp4").write_bytes(b"")  # a permanent decode failure: an error row
    return folder


def assert_every_input_once(out, storage_options, record, n_good: int, n_bad: int) -> None:
    assert record.status == "succeeded"
    assert record.videos_listed == n_good + n_bad
    assert (record.videos_ok, record.videos_failed) == (n_good, n_bad)
    answers = read_table(str(out), "answers", storage_options)
    errors = read_table(str(out), "errors", storage_options)
    keys = list(zip(answers.column("video_uri").to_pylist(), answers.column("question").to_pylist()))
    assert len(keys) == len(set(keys)) == n_good * len(QUESTIONS), "an answer row lost or duplicated"
    assert len({u for u, _ in keys}) == n_good
    failed = errors.column("video_uri").to_pylist()
    assert len(failed) == len(set(failed)) == n_bad
    assert not set(failed) & {u for u, _ in keys}
    assert record.answers == answers.num_rows


# ---- an answer actor killed mid-run ---------------------------------------------------------------------


def test_a_killed_answer_actor_is_restarted_and_its_batch_retried(ray_local, flashvlm_cache, tmp_path, monkeypatch):
    n_good = 12
    inputs = make_inputs(tmp_path / "in", n_good)
    out = tmp_path / "out"
    marker, log = tmp_path / "kill-once", tmp_path / "answered.log"
    marker.touch()

    class AnswerKilledOnce(AnswerQuestions):
        """The answer stage, whose actor process is SIGKILLed (as the OOM killer or a lost node would) when it
        first reaches the 6th of 12 videos: a kill mid-run, wherever the scheduler puts the batches. The marker
        goes first, so the retry lives. Defined in the test, so Ray ships it to the actors by value."""

        def answer_one(self, row):
            if row["video_uri"].endswith("/c05.mp4"):
                try:
                    os.remove(marker)
                except FileNotFoundError:
                    pass  # the retry
                else:
                    with open(log, "a") as f:
                        f.write(f"{os.getpid()} killed\n")
                    os.kill(os.getpid(), signal.SIGKILL)
            rows = super().answer_one(row)
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {row['video_uri'].rsplit('/', 1)[-1]}\n")
            return rows

    monkeypatch.setattr(pipeline.run, "AnswerQuestions", AnswerKilledOnce)
    record = run(config(inputs, out, run_id="killed-actor"))
    lines = [line.split() for line in log.read_text().splitlines()]
    (killed,) = [pid for pid, what in lines if what == "killed"]
    (retried,) = [pid for pid, what in lines if what == "c05.mp4"]
    assert retried != killed, "the killed batch was answered by the process that died"
    assert not marker.exists()
    assert_every_input_once(out, None, record, n_good, 1)


# ---- the S3-compatible server unreachable for a few seconds mid-run ------------------------------------


class FlakyProxy:
    """A TCP proxy on 127.0.0.1 in front of the moto server. `down()` resets every open connection and
    refuses new ones (accepted, then reset at once), as a stopped server would; `up()` serves again.
    moto keeps its buckets in memory, so stopping the real server would lose them: the outage is here."""

    def __init__(self, target_port: int):
        import socket

        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.is_down = threading.Event()
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.conns: set = set()
        self.refused = 0
        self.served = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _reset(sock) -> None:
        import socket
        import struct

        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        except OSError:
            pass
        try:
            # close() alone leaves a recv blocked in a pipe thread holding the socket open, so the job would
            # wait out its read timeout (60 s a try) on a connection that looks alive; shutdown wakes it.
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass

    def _accept(self) -> None:
        import socket

        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            if self.is_down.is_set():
                self.refused += 1
                self._reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._reset(client)
                continue
            with self.lock:  # a connection accepted while down() ran is refused, not left open through it
                if self.is_down.is_set():
                    self.refused += 1
                    self._reset(client)
                    self._reset(upstream)
                    continue
                self.served += 1
                self.conns |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.conns.discard(src)
                self.conns.discard(dst)
            self._reset(src)
            self._reset(dst)

    def down(self) -> None:
        with self.lock:
            self.is_down.set()
            conns, self.conns = list(self.conns), set()
        for sock in conns:
            self._reset(sock)

    def up(self) -> None:
        self.is_down.clear()

    def close(self) -> None:
        self.closed.set()
        self.down()
        self.listener.close()


@pytest.fixture
def flaky_s3(moto_server, s3_options):
    proxy = FlakyProxy(int(moto_server.rsplit(":", 1)[1]))
    try:
        yield proxy, {**s3_options, "endpoint_url": f"http://127.0.0.1:{proxy.port}"}
    finally:
        proxy.close()


def test_an_s3_outage_mid_run_is_retried_and_nothing_is_lost(
    ray_local, flashvlm_cache, flaky_s3, s3_options, s3_bucket, tmp_path, monkeypatch
):
    import s3fs

    proxy, options = flaky_s3
    n_good, outage_s = 8, 4.0
    local = make_inputs(tmp_path / "in", n_good)
    direct = s3fs.S3FileSystem(**s3_options)  # straight to moto: the test's own view, never down
    for path in sorted(local.iterdir()):
        direct.put_file(str(path.resolve()), f"{s3_bucket}/videos/{path.name}")
    out = f"s3://{s3_bucket}/qa"
    cfg = config(f"s3://{s3_bucket}/videos/", out, run_id="s3-outage", storage_options=options)
    staged = f"{s3_bucket}/qa/{STAGING}/s3-outage/answers"
    asked, down = tmp_path / "outage-asked", tmp_path / "outage-down"
    seen: dict = {"outage": None, "error": None}

    class AnswerThenOutage(AnswerQuestions):
        """The answer stage; having answered the 4th of 8 videos it asks for the outage and holds those
        answers until the server is down, so their write, and all S3 work after it, meets the outage."""

        def answer_one(self, row):
            rows = super().answer_one(row)
            if row["video_uri"].endswith("/c03.mp4") and not down.exists():
                asked.touch()
                while not down.exists():  # the test's thread answers within a poll (pytest's timeout: a hang)
                    time.sleep(0.05)
            return rows

    def outage():
        try:
            while not asked.exists():
                time.sleep(0.05)
            direct.invalidate_cache()
            written = len(direct.find(staged)) if direct.exists(staged) else 0
            proxy.down()
            down.touch()
            started = time.monotonic()
            # Down for outage_s, and on until the job has tried S3 while it is down: it must (the held answers
            # are still to be written), however long a loaded machine takes to get there.
            while time.monotonic() - started < outage_s or proxy.refused == 0:
                time.sleep(0.05)
            proxy.up()
            seen["outage"] = (written, time.monotonic() - started, proxy.refused)
        except BaseException as exc:
            seen["error"] = exc
        finally:
            down.touch()  # never leave the answer actor waiting

    monkeypatch.setattr(pipeline.run, "AnswerQuestions", AnswerThenOutage)
    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    record = run(cfg)
    thread.join(timeout=30)
    print(seen, proxy.served)
    assert seen["error"] is None, seen["error"]
    assert seen["outage"], "the S3 outage never happened"
    written, lasted, refused = seen["outage"]
    assert written < n_good, "the outage came after every answer was written"
    assert lasted >= outage_s and refused > 0, "nothing tried S3 during the outage"
    assert_every_input_once(out, s3_options, record, n_good, 1)
