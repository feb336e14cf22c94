"""All-or-nothing runs: stage every file of a run, then commit it with a manifest, roll forward on recovery.

    <output.uri>/_staging/<run_id>/answers/date=D/<run_id>-<digest>.parquet   written while the run streams
    <output.uri>/_staging/<run_id>/errors/...  and  .../runs/date=D/<run_id>.parquet
    <output.uri>/_staging/<run_id>/_COMMIT.json                                 the commit point

Readers only look under answers/, errors/, evaluations/ and runs/, so a run's rows are invisible until
it commits. Commit: write `_COMMIT.json` (one atomic PUT on S3, temp name + rename on a local disk) listing the
staged files the run's writers reported, then move each file to the same relative path under output.uri
(the run record last), then delete the staging folder. The moves are one file at a time on every store (a rename each on a
local disk, a copy and delete on S3): during them a reader listing a table can see part of the run, never
its run record, which moves last; docs/operations.md ("Commits: what a reader sees") gives the reading
rule that never sees part of a run (pipeline.tables.read_committed). Only the reported files are published: a killed
earlier attempt of the same run_id can leave Ray workers alive for seconds after its driver died, and a
file such a worker writes into the staging folder is not this attempt's and is deleted with the folder.
A process killed:
  - before `_COMMIT.json` exists: nothing is visible; the staging folder is rolled back (deleted) by a
    later run with the same run_id, or by any run once it is older than STALE_AFTER_S;
  - after it: the next run (any run id) finds the manifest and finishes the moves (roll forward). Moves
    are idempotent (same name, same bytes), so two runs recovering at once do no harm.
A run that fails with an exception is rolled back: none of its rows are committed, its run record
(status failed) is written directly to runs/.
A manifest is data anyone with write access to output.uri could have written: every entry must be a
relative path inside the run's staging folder, under answers/, errors/, evaluations/ (pipeline/evaluate.py)
or runs/. One that is not ('..',
an absolute path, another URI) stops the whole run's publication before any move, naming the entry.
"""

from __future__ import annotations

import json
import posixpath
import time
import warnings
from typing import Any, Mapping, Optional

from pipeline.storage import filesystem, join, mtime_of, write_atomic

STAGING = "_staging"
MANIFEST = "_COMMIT.json"
STALE_AFTER_S = 24 * 3600.0  # an uncommitted staging folder this old belongs to a dead run
_ORDER = {"answers": 0, "errors": 0, "evaluations": 0, "runs": 1}  # the run record moves last: runs/ lists only complete runs


def staging_uri(output_uri: str, run_id: str) -> str:
    """Where a run writes its tables before it commits (same layout as output.uri)."""
    return join(output_uri, STAGING, run_id)


def final_path(staged_path: str, output_root: str, run_id: str) -> str:
    """The committed path of a staged file (path inside the filesystem, no scheme)."""
    prefix = join(output_root, STAGING, run_id) + "/"
    if not staged_path.startswith(prefix):
        raise ValueError(f"{staged_path} is not staged under {prefix}")
    return join(output_root, staged_path[len(prefix):])


def _move(fs, src: str, dst: str) -> None:
    fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
    fs.mv(src, dst)  # a rename on a local disk; copy + delete on S3 (a repeat is harmless: same bytes)


def _check_entries(entries: Any, stage: str) -> list[str]:
    """The manifest's entries, if each is a table file inside the staging folder; else a ValueError naming them.

    Checked on the text alone: 'answers/date=D/x.parquet' is accepted; '..', '.', empty parts, a leading
    '/', a scheme ('s3://other/x': its first part is 's3:') or a backslash are refused, so no entry can
    resolve outside `stage` on any filesystem, and the destination is always one of the tables."""
    if not isinstance(entries, list):
        raise ValueError(f"{stage}/{MANIFEST}: 'files' must be a list of paths, got {type(entries).__name__}; nothing moved")
    bad = [
        e for e in entries
        if not isinstance(e, str) or "\\" in e or e.split("/", 1)[0] not in _ORDER
        or any(part in ("", ".", "..") for part in e.split("/"))
    ]
    if bad:
        raise ValueError(
            f"{stage}/{MANIFEST} lists entries outside the run's staging folder (or outside answers/, errors/, "
            f"runs/): {', '.join(repr(e) for e in bad[:5])}{' ...' if len(bad) > 5 else ''}; nothing of this run "
            f"was moved. Inspect {stage}/ and delete it to go on."
        )
    return entries


def _apply(fs, root: str, run_id: str, relpaths: list[str]) -> list[str]:
    """Move staged files to their final names (skipping those already moved), then drop the staging folder.

    Every entry is checked before the first move (`_check_entries`)."""
    stage = join(root, STAGING, run_id)
    relpaths = _check_entries(relpaths, stage)
    done = []
    for rel in sorted(relpaths, key=lambda r: (_ORDER.get(r.split("/", 1)[0], 0), r)):
        src, dst = join(stage, rel), join(root, rel)
        if fs.exists(src):
            _move(fs, src, dst)
        done.append(dst)
    try:
        fs.rm(stage, recursive=True)
    except OSError as exc:  # e.g. a dead attempt's late write landed mid-delete: every file is moved already,
        # and recover() finishes the clean-up (moves are skipped once done)
        warnings.warn(f"staging folder {stage} not fully removed: {exc}", stacklevel=2)
    return done


def commit(
    output_uri: str,
    storage_options: Optional[Mapping[str, Any]],
    run_id: str,
    files: list[str],
) -> list[str]:
    """Commit a staged run; returns the final paths (in the filesystem, no scheme).

    files: the staged files this attempt wrote (paths in the filesystem, as the writers return them);
        only these are published, whatever else the staging folder holds.
    """
    fs, root = filesystem(output_uri, storage_options)
    fs.invalidate_cache()
    stage = join(root, STAGING, run_id)
    files = [posixpath.normpath(p) for p in files]  # 'stage/../x' is not staged
    outside = [p for p in files if not p.startswith(stage + "/")]
    if outside:
        raise ValueError(f"files: not staged under {stage}/: {outside[:3]}")
    relpaths = _check_entries(sorted({p[len(stage) + 1:] for p in files}), stage)  # never a manifest recover refuses
    manifest = {"run_id": run_id, "files": relpaths, "committed_at": time.time()}
    write_atomic(fs, join(stage, MANIFEST), json.dumps(manifest).encode())
    return _apply(fs, root, run_id, relpaths)


def rollback(output_uri: str, storage_options: Optional[Mapping[str, Any]], run_id: str) -> bool:
    """Delete a run's staging folder (its rows were never visible). True if there was one.

    Refuses (False) once the run's manifest exists: then the commit point is passed and `recover`
    must roll it forward instead."""
    fs, root = filesystem(output_uri, storage_options)
    fs.invalidate_cache()
    stage = join(root, STAGING, run_id)
    if fs.exists(stage) and not fs.exists(join(stage, MANIFEST)):
        fs.rm(stage, recursive=True)
        return True
    return False


def _newest_mtime(fs, folder: str) -> Optional[float]:
    newest = None
    for info in fs.find(folder, detail=True).values():
        mtime = mtime_of(info)
        if mtime is not None:
            newest = max(newest or 0.0, mtime)
    return newest


def recover(
    output_uri: str, storage_options: Optional[Mapping[str, Any]], current_run_id: Optional[str] = None,
    stale_after_s: float = STALE_AFTER_S,
) -> dict[str, list[str]]:
    """Finish every committed-but-unmoved run (roll forward) and delete dead uncommitted ones (roll back).

    An uncommitted staging folder is deleted when it belongs to `current_run_id` (a retry of that run)
    or is older than stale_after_s; others may belong to a run still in progress and are left alone.
    """
    fs, root = filesystem(output_uri, storage_options)
    fs.invalidate_cache()
    base = join(root, STAGING)
    out: dict[str, list[str]] = {"rolled_forward": [], "rolled_back": [], "in_progress": []}
    if not fs.exists(base):
        return out
    for folder in sorted(fs.ls(base, detail=False)):
        run_id = folder.rstrip("/").rsplit("/", 1)[-1]
        manifest_path = join(folder, MANIFEST)
        manifest = None
        if fs.exists(manifest_path):
            try:
                manifest = json.loads(fs.cat_file(manifest_path))
            except ValueError:
                manifest = None  # a torn manifest (impossible with the atomic write): nothing was moved yet
        if manifest is not None:
            _apply(fs, root, run_id, manifest.get("files") if isinstance(manifest, dict) else None)
            out["rolled_forward"].append(run_id)
            continue
        newest = _newest_mtime(fs, folder)
        if run_id == current_run_id or newest is None or time.time() - newest > stale_after_s:
            fs.rm(folder, recursive=True)
            out["rolled_back"].append(run_id)
        else:
            out["in_progress"].append(run_id)
    return out


__all__ = ["STAGING", "MANIFEST", "staging_uri", "final_path", "commit", "rollback", "recover"]
