"""Running jobs: per-item output folders, resume, errors recorded, report kept current.

Layout: ``OUT/report.json`` and one folder per item, ``OUT/<name>/``, holding that item's
outputs and ``item.json``. ``item.json`` is written last (atomically), so an item is done
exactly when it exists; a killed run leaves no half-written file and re-running the same
command skips the finished items. ``report.json`` is rewritten with the items so far at most
every PROGRESS_EVERY_S seconds (cfgen/report.py) and with its summary at the end. Item folders
that are symbolic links are refused, never followed.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Protocol, TYPE_CHECKING

from cfgen.editing.core import Computed, Outcome, prepare
from cfgen.editing.params import EditParams
from cfgen.editing.jobs import Job
from cfgen.editing.prepare import Prepared
from cfgen.errors import CfgenError, InputError
from cfgen.io.atomic import write_json
from cfgen.io.scan import Scan, check_output_format, read_scan
from cfgen.journal import claim, release
from cfgen.report import RunReport
from cfgen.viz.style import FigureOptions

if TYPE_CHECKING:
    from cfgen.models.loader import LoadedModel

ITEM_FILE = "item.json"


class Operation(Protocol):
    command: str

    def compute(self, model: LoadedModel, scans: list[Scan], params: list[EditParams], on_step: Callable[[], None] | None,
                preps: list[Prepared] | None, vae_chunk: int | None = None) -> list[Computed]: ...

    def finish(self, model: LoadedModel, scan: Scan, computed: Computed) -> Outcome: ...

    def write(self, folder: Path, scan: Scan, outcome: Outcome, params: EditParams,
              fmt: str | None, figures: FigureOptions) -> tuple[dict[str, Path], dict[str, Any]]: ...


def fingerprint(command: str, job: Job, model_sha: dict[str, str], fmt: str | None,
                figures: FigureOptions = FigureOptions()) -> str:
    blob = json.dumps({"command": command, "params": job.params.as_dict(), "model": model_sha,
                       "input": str(job.path.resolve()), "format": fmt, "figures": figures.as_dict()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _previous(folder: Path) -> dict | None:
    try:
        rec = json.loads((folder / ITEM_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _base_item(job: Job) -> dict[str, Any]:
    item = {"input": job.image, "row": job.row, "name": job.name, "status": "error", "error": None,
            "seed": job.params.seed, "params": job.params.as_dict(), "outputs": {}, "metrics": {}}
    if job.warnings:
        item["warnings"] = list(job.warnings)
    return item


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
    if isinstance(exc, OSError) and exc.strerror:  # the machine, not cfgen: disk full, permissions, ...
        where = f" {exc.filename}" if exc.filename else ""
        return f"{job.image}: cannot write or read a file{where} ({exc.strerror})"
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


def _finite(tensors) -> bool:
    """No inf/NaN in the model's output (checked before the intensity window clips inf away)."""
    import torch

    return all(bool(torch.isfinite(torch.as_tensor(t)).all()) for t in tensors)


def _compute(op: Operation, model, scans: list[Scan], params: list[EditParams], preps: list[Prepared],
             on_step: Callable[[], None] | None, vae_chunk: int | None) -> tuple[list[Computed], str | None]:
    """The model side of one batch (or one item); a half-precision pass with non-finite values
    is redone in float32 (the second value says so) rather than written as black images."""
    import torch

    computed = op.compute(model, scans, params, on_step, preps, vae_chunk)
    if model.dtype == torch.float32 or _finite(c.model_out for c in computed):  # float32: _finish checks
        return computed, None
    from cfgen.editing.speed import full_precision

    half = str(model.dtype).removeprefix("torch.")
    with full_precision(model):
        computed = op.compute(model, scans, params, None, preps, vae_chunk)  # the progress bar counted these steps
    return computed, f"float32 (the {half} pass gave non-finite values)"


def default_workers() -> int:
    """The cores, but one for the thread that drives the model, shared among the processes on this
    machine (``accelerate launch`` sets LOCAL_WORLD_SIZE); 2..16. Writing a 2500x2048 scan's
    outputs (16-bit PNG, difference map, panel) takes about 2.9 s of one core."""
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(2, min(16, (os.cpu_count() or 2) // processes - 1))


def run_jobs(op: Operation, model, jobs: list[Job], out_dir: Path, report: RunReport, fmt: str | None = None,
             figures: FigureOptions = FigureOptions(),
             overwrite: bool = False, on_item: Callable[[Job, dict], None] | None = None,
             on_step: Callable[[], None] | None = None, batch_size: int = 1, io_threads: int | None = None,
             vae_chunk: int | None = None) -> RunReport:
    """Each job's item into ``report`` (kept current on disk); up to ``batch_size`` compatible
    jobs share each UNet forward. A batch that fails is retried item by item, so one bad scan
    never costs its neighbours.

    The host work overlaps the model's: ``io_threads`` worker threads [``default_workers()``]
    read and prepare the next batch's scans (window, resize, pinned memory on CUDA) while the
    current batch computes, and finish each computed item (back to the scan's grid, metrics,
    PNG/NIfTI/DICOM encoding, item.json); one thread records the items in report.json in job
    order. Decoding, resizing and encoding release the GIL, and threads need no pickling."""
    out_dir = Path(out_dir)
    chunks = list(_chunks(jobs, max(1, batch_size)))
    threads = io_threads or default_workers()

    def done(job: Job, item: dict, t0: float, share: int = 1, post: Future | None = None,
             note: str | None = None) -> None:  # the recording thread only
        if post is not None:
            try:
                item.update(post.result())
                if note:
                    item["precision"] = note
            except Exception as exc:  # noqa: BLE001
                item["error"] = _error_text(job, exc)
        item.setdefault("timings", {})["total_s"] = round((time.perf_counter() - t0) / share, 3)
        elsewhere = item.pop("_elsewhere", False)  # another process is computing it: its journal records it
        report.add_item(item, journal=not elsewhere)
        if not elsewhere and not job.error:  # a row refused before its claim holds none to drop
            release(out_dir / job.name)
        report.write_progress()
        if on_item:
            on_item(job, item)

    def claims(chunk: list[Job]) -> list[Future | None]:
        return [None if job.error else workers.submit(_claim, op, model, job, out_dir, fmt, figures, overwrite)
                for job in chunk]

    def post(job: Job, item: dict, claim: dict, computed: Computed, note: str | None, t0: float, share: int):
        fin = workers.submit(_finish, op, model, job, out_dir, fmt, figures, claim, computed)
        return recorder.submit(done, job, item, t0, share, fin, note)

    with ThreadPoolExecutor(threads, thread_name_prefix="cfgen-io") as workers, \
            ThreadPoolExecutor(1, thread_name_prefix="cfgen-record") as recorder:
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
                        mine.append(recorder.submit(done, job, item, t0))
                        continue
                    ready.append((job, item, claim))
                except Exception as exc:  # noqa: BLE001 - recorded per item
                    item["error"] = _error_text(job, exc)
                    mine.append(recorder.submit(done, job, item, t0))
            alone = ready  # items left to compute one by one
            if len(ready) > 1:
                try:
                    computed, note = _compute(op, model, [c["scan"] for _, _, c in ready],
                                              [j.params for j, _, _ in ready], [c["prep"] for _, _, c in ready],
                                              on_step, vae_chunk)
                    mine += [post(job, item, claim, c, note, t0, len(ready))
                             for (job, item, claim), c in zip(ready, computed)]
                    alone = []
                except Exception:  # noqa: BLE001 - fall back to one by one, which records each error
                    pass
            for job, item, claim in alone:
                t1 = time.perf_counter()
                try:
                    (c,), note = _compute(op, model, [claim["scan"]], [job.params], [claim["prep"]], on_step, vae_chunk)
                except Exception as exc:  # noqa: BLE001
                    item["error"] = _error_text(job, exc)
                    mine.append(recorder.submit(done, job, item, t1))
                    continue
                mine.append(post(job, item, claim, c, note, t1, 1))
            writes.append(mine)
            if len(writes) > 1:  # at most two batches of results in memory; worker errors surface here
                for f in writes.pop(0):
                    f.result()
        for mine in writes:
            for f in mine:
                f.result()
    report.write()
    return report


def _claim(op: Operation, model, job: Job, out_dir: Path, fmt: str | None, figures: FigureOptions,
           overwrite: bool) -> dict[str, Any]:
    """Resume check, stale temporaries removed, the scan read: {"status": "skipped", ...} or
    {"status": "ready", "scan", "folder", "fingerprint"}."""
    folder = out_dir / job.name
    if folder.is_symlink():  # resume would clean, and writes would land, wherever it points
        raise InputError(f"{folder}: is a symbolic link; cfgen does not write through links inside the "
                         "output folder (remove the link or choose another --out)")
    fp = fingerprint(op.command, job, model.sha256, fmt, figures)
    prev = _previous(folder)
    if prev and not overwrite:
        outputs_exist = all((out_dir / p).exists() for p in prev.get("outputs", {}).values())
        if prev.get("fingerprint") == fp and prev.get("status") == "ok" and outputs_exist:
            return {"status": "skipped", "error": None, "reason": "done in an earlier run",
                    "outputs": prev["outputs"], "metrics": prev.get("metrics", {}), "fingerprint": fp}
        raise InputError(f"{folder}: holds results of a run with other inputs or parameters; "
                         "pass --overwrite or choose another output folder")
    holder = claim(folder)
    if holder is not None:  # another process on this OUT (a shard, a second launch) is computing it
        return {"status": "skipped", "error": None, "reason": f"being computed by another process ({holder})",
                "_elsewhere": True}
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
    if fmt is not None:  # before the model computes: a format the scan cannot be written as
        check_output_format(scan.format, fmt, job.path)
    return {"status": "ready", "scan": scan, "prep": prepare(model, scan, job.params), "folder": folder,
            "fingerprint": fp}


def _finish(op: Operation, model, job: Job, out_dir: Path, fmt: str | None, figures: FigureOptions, claim: dict,
            computed: Computed) -> dict[str, Any]:
    scan, folder = claim["scan"], claim["folder"]
    outcome = op.finish(model, scan, computed)
    if not _finite([outcome.model_out, outcome.pixels]):
        raise InputError(f"{job.path}: the model produced non-finite values (try --dtype float32)")
    files, extra = op.write(folder, scan, outcome, job.params, fmt, figures)
    record = {
        "status": "ok", "error": None, "fingerprint": claim["fingerprint"],
        "outputs": {k: p.relative_to(out_dir).as_posix() for k, p in files.items()},
        "metrics": {**outcome.metrics, **extra["metrics"]}, "figure": extra["figure"],
        "scan": scan.info(), "preprocessing": outcome.prepared.record(), "timesteps": outcome.timesteps,
        "inversion": outcome.inversion,
    }
    if outcome.attention is not None:
        record["attention"] = outcome.attention
    if scan.meta.get("notes"):  # library warnings while reading the scan, kept off stderr
        record["read_notes"] = scan.meta["notes"]
    if job.params.mask == "refine" and outcome.metrics.get("mask_fraction") == 0:
        record["warnings"] = [*job.warnings, f"--mask refine kept nothing: no change of the first pass reached "
                              f"--refine-change {job.params.change_threshold():g}, so the counterfactual is the "
                              "scan; lower it or use --mask auto"]
    write_json(folder / ITEM_FILE, {**_base_item(job), **record})
    return record
