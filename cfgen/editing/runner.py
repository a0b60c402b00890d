"""Running jobs: per-item output folders, resume, errors recorded, report kept current.

Layout: ``OUT/report.json`` and one folder per item, ``OUT/<name>/``, holding that item's
outputs and ``item.json``. ``item.json`` is written last (atomically), so an item is done
exactly when it exists; a killed run leaves no half-written file and re-running the same
command skips the finished items.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from cfgen.editing.core import Outcome
from cfgen.editing.params import EditParams
from cfgen.editing.jobs import Job
from cfgen.errors import CfgenError, InputError
from cfgen.io.atomic import write_json
from cfgen.io.scan import Scan, read_scan
from cfgen.report import RunReport

ITEM_FILE = "item.json"


class Operation(Protocol):
    command: str

    def run(self, model, scan: Scan, params: EditParams, on_step: Callable[[], None] | None) -> Outcome: ...

    def run_many(self, model, scans: list[Scan], params: list[EditParams],
                 on_step: Callable[[], None] | None) -> list[Outcome]: ...

    def write(self, folder: Path, scan: Scan, outcome: Outcome, params: EditParams,
              fmt: str | None) -> tuple[dict[str, Path], dict[str, Any]]: ...


def fingerprint(command: str, job: Job, model_sha: dict[str, str], fmt: str | None) -> str:
    blob = json.dumps({"command": command, "params": job.params.as_dict(), "model": model_sha,
                       "input": str(job.path.resolve()), "format": fmt}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _previous(folder: Path) -> dict | None:
    try:
        rec = json.loads((folder / ITEM_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _base_item(job: Job) -> dict[str, Any]:
    return {"input": job.image, "row": job.row, "name": job.name, "status": "error", "error": None,
            "seed": job.params.seed, "params": job.params.as_dict(), "outputs": {}, "metrics": {}}


def _new_item(job: Job, out_dir: Path) -> dict[str, Any]:
    item = _base_item(job)
    item["input_file"] = os.path.relpath(job.path.absolute(), out_dir.absolute())
    if job.columns:
        item["columns"] = {k: os.path.relpath(Path(v).absolute(), out_dir.absolute()) if isinstance(v, Path) else v
                           for k, v in job.columns.items()}
    return item


def _error_text(job: Job, exc: BaseException) -> str:
    if isinstance(exc, CfgenError):
        msg = str(exc)
        return msg if (job.image and job.image in msg) or job.row else f"{job.image}: {msg}"
    # a bug must not stop the batch: record it, go on with the next row
    if os.environ.get("CFGEN_DEBUG"):
        traceback.print_exception(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    return (f"{job.image}: internal error ({exc.__class__.__name__}: {first}); "
            "please report it with CFGEN_DEBUG=1 output")


def _chunks(jobs: list[Job], batch_size: int):
    """Consecutive jobs that can share a batch (equal core.batch_key), at most batch_size each."""
    from cfgen.editing.core import batch_key

    chunk: list[Job] = []
    for job in jobs:
        key = batch_key(job.params) if not job.error else None
        if chunk and (len(chunk) >= batch_size or key is None or key != batch_key(chunk[0].params)):
            yield chunk
            chunk = []
        chunk.append(job)
        if key is None:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _finite(outcomes: list[Outcome]) -> bool:
    """No inf/NaN in the model's output (checked before the intensity window clips inf away)."""
    import torch

    return all(bool(torch.isfinite(o.model_out).all()) and np.isfinite(o.pixels).all() for o in outcomes)


def _compute(op: Operation, model, scans: list[Scan], params: list[EditParams],
             on_step: Callable[[], None] | None) -> tuple[list[Outcome], str | None]:
    """Outcomes of one batch (or one item); a half-precision pass with non-finite values is
    redone in float32 (the second value says so) rather than written as black images."""
    import torch

    def once(step):
        if len(scans) > 1:
            return op.run_many(model, scans, params, step)
        return [op.run(model, scans[0], params[0], step)]

    outcomes = once(on_step)
    if model.dtype == torch.float32 or _finite(outcomes):  # float32: _finish's check is the only one
        return outcomes, None
    from cfgen.editing.speed import full_precision

    half = str(model.dtype).removeprefix("torch.")
    with full_precision(model):
        outcomes = once(None)  # the progress bar already counted these steps
    return outcomes, f"float32 (the {half} pass gave non-finite values)"


def run_jobs(op: Operation, model, jobs: list[Job], out_dir: Path, report: RunReport, fmt: str | None = None,
             overwrite: bool = False, on_item: Callable[[Job, dict], None] | None = None,
             on_step: Callable[[], None] | None = None, batch_size: int = 1, io_threads: int = 2) -> RunReport:
    """Each job's item into ``report`` (kept current on disk); up to ``batch_size`` compatible
    jobs share each UNet forward. A batch that fails is retried item by item, so one bad scan
    never costs its neighbours.

    Reading and writing overlap the computation: the next batch's scans are read by
    ``io_threads`` threads while the current batch computes, and one writer thread writes
    outputs, item.json and report.json in job order (scan decoding and PNG/NIfTI/DICOM
    encoding release the GIL; threads need no pickling of scans or outcomes)."""
    out_dir = Path(out_dir)
    chunks = list(_chunks(jobs, max(1, batch_size)))

    def done(job: Job, item: dict, t0: float, share: int = 1) -> None:  # writer thread only
        item.setdefault("timings", {})["total_s"] = round((time.perf_counter() - t0) / share, 3)
        report.add_item(item)
        report.write()
        if on_item:
            on_item(job, item)

    def finish(job: Job, item: dict, claim: dict, outcome: Outcome, note: str | None, t0: float, share: int):
        try:
            item.update(_finish(op, job, out_dir, fmt, claim, outcome))
            if note:
                item["precision"] = note
        except Exception as exc:  # noqa: BLE001
            item["error"] = _error_text(job, exc)
        done(job, item, t0, share)

    def claims(chunk: list[Job]) -> list[Future | None]:
        return [None if job.error else readers.submit(_claim, op, model, job, out_dir, fmt, overwrite) for job in chunk]

    with ThreadPoolExecutor(max(1, io_threads), thread_name_prefix="cfgen-read") as readers, \
            ThreadPoolExecutor(1, thread_name_prefix="cfgen-write") as writer:
        writes: list[list[Future]] = []
        ahead = claims(chunks[0]) if chunks else []
        for k, chunk in enumerate(chunks):
            futures, ahead = ahead, claims(chunks[k + 1]) if k + 1 < len(chunks) else []
            t0 = time.perf_counter()
            mine: list[Future] = []
            ready = []  # (job, item, claim) for the items that need computing
            for job, fut in zip(chunk, futures):
                item = _new_item(job, out_dir)
                try:
                    if job.error:
                        raise InputError(job.error)
                    claim = fut.result()
                    if claim["status"] == "skipped":
                        item.update(claim)
                        mine.append(writer.submit(done, job, item, t0))
                        continue
                    ready.append((job, item, claim))
                except Exception as exc:  # noqa: BLE001 - recorded per item
                    item["error"] = _error_text(job, exc)
                    mine.append(writer.submit(done, job, item, t0))
            alone = ready  # items left to compute one by one
            if len(ready) > 1:
                try:
                    outcomes, note = _compute(op, model, [c["scan"] for _, _, c in ready],
                                              [j.params for j, _, _ in ready], on_step)
                    mine += [writer.submit(finish, job, item, claim, outcome, note, t0, len(ready))
                             for (job, item, claim), outcome in zip(ready, outcomes)]
                    alone = []
                except Exception:  # noqa: BLE001 - fall back to one by one, which records each error
                    pass
            for job, item, claim in alone:
                t1 = time.perf_counter()
                try:
                    (outcome,), note = _compute(op, model, [claim["scan"]], [job.params], on_step)
                except Exception as exc:  # noqa: BLE001
                    item["error"] = _error_text(job, exc)
                    mine.append(writer.submit(done, job, item, t1))
                    continue
                mine.append(writer.submit(finish, job, item, claim, outcome, note, t1, 1))
            writes.append(mine)
            if len(writes) > 1:  # at most two batches of outcomes in memory; writer errors surface here
                for f in writes.pop(0):
                    f.result()
        for mine in writes:
            for f in mine:
                f.result()
    return report


def _claim(op: Operation, model, job: Job, out_dir: Path, fmt: str | None, overwrite: bool) -> dict[str, Any]:
    """Resume check, stale temporaries removed, the scan read: {"status": "skipped", ...} or
    {"status": "ready", "scan", "folder", "fingerprint"}."""
    folder = out_dir / job.name
    fp = fingerprint(op.command, job, model.sha256, fmt)
    prev = _previous(folder)
    if prev and not overwrite:
        outputs_exist = all((out_dir / p).exists() for p in prev.get("outputs", {}).values())
        if prev.get("fingerprint") == fp and prev.get("status") == "ok" and outputs_exist:
            return {"status": "skipped", "error": None, "reason": "done in an earlier run",
                    "outputs": prev["outputs"], "metrics": prev.get("metrics", {}), "fingerprint": fp}
        raise InputError(f"{folder}: holds results of a run with other inputs or parameters; "
                         "pass --overwrite or choose another output folder")
    try:
        job.path.resolve().relative_to(folder.resolve())
        raise InputError(f"{job.path}: the input lies inside its own output folder {folder}")
    except ValueError:
        pass
    for stale in folder.glob(".tmp-*") if folder.is_dir() else []:  # left by a killed run
        if stale.is_dir():
            import shutil

            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    return {"status": "ready", "scan": read_scan(job.path), "folder": folder, "fingerprint": fp}


def _finish(op: Operation, job: Job, out_dir: Path, fmt: str | None, claim: dict, outcome: Outcome) -> dict[str, Any]:
    scan, folder = claim["scan"], claim["folder"]
    if not _finite([outcome]):
        raise InputError(f"{job.path}: the model produced non-finite values (try --dtype float32)")
    files, extra_metrics = op.write(folder, scan, outcome, job.params, fmt)
    record = {
        "status": "ok", "error": None, "fingerprint": claim["fingerprint"],
        "outputs": {k: p.relative_to(out_dir).as_posix() for k, p in files.items()},
        "metrics": {**outcome.metrics, **extra_metrics},
        "scan": scan.info(), "preprocessing": outcome.prepared.record(), "timesteps": outcome.timesteps,
    }
    write_json(folder / ITEM_FILE, {**_base_item(job), **record})
    return record
