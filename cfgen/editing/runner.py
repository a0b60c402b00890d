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


def run_jobs(op: Operation, model, jobs: list[Job], out_dir: Path, report: RunReport, fmt: str | None = None,
             overwrite: bool = False, on_item: Callable[[Job, dict], None] | None = None,
             on_step: Callable[[], None] | None = None) -> RunReport:
    out_dir = Path(out_dir)
    for job in jobs:
        item = _base_item(job)
        item["input_file"] = os.path.relpath(job.path.absolute(), out_dir.absolute())
        if job.columns:
            item["columns"] = {k: os.path.relpath(Path(v).absolute(), out_dir.absolute()) if isinstance(v, Path) else v
                               for k, v in job.columns.items()}
        t0 = time.perf_counter()
        try:
            if job.error:
                raise InputError(job.error)
            item.update(_run_one(op, model, job, out_dir, fmt, overwrite, on_step))
        except CfgenError as exc:
            msg = str(exc)
            item["error"] = msg if (job.image and job.image in msg) or job.row else f"{job.image}: {msg}"
        except Exception as exc:  # a bug must not stop the batch: record it, go on with the next row
            first = (str(exc).strip().splitlines() or [""])[0]
            item["error"] = (f"{job.image}: internal error ({exc.__class__.__name__}: {first}); "
                             "please report it with CFGEN_DEBUG=1 output")
            if os.environ.get("CFGEN_DEBUG"):
                traceback.print_exc()
        item.setdefault("timings", {})["total_s"] = round(time.perf_counter() - t0, 3)
        report.add_item(item)
        report.write()
        if on_item:
            on_item(job, item)
    return report


def _run_one(op: Operation, model, job: Job, out_dir: Path, fmt: str | None, overwrite: bool,
             on_step: Callable[[], None] | None) -> dict[str, Any]:
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
    scan = read_scan(job.path)
    outcome = op.run(model, scan, job.params, on_step)
    if not np.isfinite(outcome.pixels).all():
        raise InputError(f"{job.path}: the model produced non-finite values (try --dtype float32)")
    files, extra_metrics = op.write(folder, scan, outcome, job.params, fmt)
    record = {
        "status": "ok", "error": None, "fingerprint": fp,
        "outputs": {k: p.relative_to(out_dir).as_posix() for k, p in files.items()},
        "metrics": {**outcome.metrics, **extra_metrics},
        "scan": scan.info(), "preprocessing": outcome.prepared.record(), "timesteps": outcome.timesteps,
    }
    write_json(folder / ITEM_FILE, {**_base_item(job), **record})
    return record
