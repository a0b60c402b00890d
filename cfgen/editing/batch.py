"""A whole `invert` / `edit` run as one library call: jobs, shard, model load, memory plan,
runner, merge. The CLI parses options, calls :func:`run_edits` / :func:`run_inversions` and
prints; benchmarks and tests call the same functions.

    from cfgen.editing.batch import RunSettings, run_edits
    report = run_edits("scan.png", RunSettings(out=Path("out"), model="demo-cxr"),
                       prompt="Chest X-ray showing Pleural Effusion", mask="auto")
    report.data["items"][0]["outputs"]["counterfactual"]
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Optional

from cfgen.errors import InputError, ScanReadError, UsageError

if TYPE_CHECKING:
    from cfgen.editing.jobs import Job
    from cfgen.editing.params import EditParams
    from cfgen.editing.shard import Shard
    from cfgen.models.loader import LoadedModel
    from cfgen.report import RunReport

#: (items in this process, denoising steps per item) -> a context yielding (on_item, on_step)
Progress = Callable[[int, int], ContextManager[tuple[Optional[Callable], Optional[Callable]]]]


@dataclass
class RunSettings:
    """How a run runs (not what it does to a scan: that is EditParams)."""

    out: Path = Path("cfgen-out")
    model: "str | LoadedModel | None" = None  # entry name, folder, or an already loaded model
    device: str = "auto"
    dtype: str = "float32"
    fmt: str | None = None  # output format [default: the input's]
    overwrite: bool = False
    batch_size: int | None = 1  # None: as many as the free memory holds (measured)
    compile: bool = False
    workers: int | None = None  # host threads [default: runner.default_workers()]
    strict: bool = False  # refuse prompts the text encoder cannot take whole (else: warnings in the items)
    shard: str | None = None  # "I/N": the I-th of N contiguous shares of the rows (1-based), e.g. a Slurm array task
    figure_format: str = "png"  # panel and difference figures: png, svg or pdf
    difference_range: float | None = None  # +- colour limit of every difference map (HU for CT, else window fraction)

    @property
    def figures(self) -> "FigureOptions":
        from cfgen.viz.style import FigureOptions

        return FigureOptions(self.figure_format, self.difference_range)

    def check(self) -> None:
        if self.shard is not None:
            parse_shard(self.shard)
        self.figures.check()
        if self.workers is not None and not 1 <= self.workers <= 64:
            raise UsageError(f"--workers {self.workers}: must be between 1 and 64")
        if self.batch_size is not None and not 1 <= self.batch_size <= 1024:
            raise UsageError(f"--batch-size {self.batch_size}: must be between 1 and 1024")


@dataclass
class RunResult:
    report: "RunReport"
    main: bool = True  # False: a secondary process of a sharded run (the main one merged the report)

    @property
    def failed(self) -> int:
        return self.report.failed


@contextlib.contextmanager
def no_progress(items: int, steps: int) -> Iterator[tuple[None, None]]:
    yield (None, None)


def parse_batch_size(text: str) -> int | None:
    """--batch-size: a whole number (its range is RunSettings.check's), or auto (None)."""
    if text.strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--batch-size {text}: give a whole number or auto") from None


def parse_shard(text: str) -> tuple[int, int]:
    """--shard I/N -> (I, N), 1 <= I <= N."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text}: give I/N, e.g. 2/8 for the second of eight shares") from None
    if not 1 <= i <= n <= 100000:
        raise UsageError(f"--shard {text}: I must be between 1 and N (N at most 100000)")
    return i, n


def shard_share(jobs: list, text: str | None) -> list:
    """The contiguous I-th of N shares of ``jobs`` (all of them without --shard)."""
    if text is None:
        return jobs
    i, n = parse_shard(text)
    return jobs[(i - 1) * len(jobs) // n: i * len(jobs) // n]


def run_edits(scan: str | Path | None = None, settings: RunSettings | None = None, *, batch: Path | None = None,
              progress: Progress = no_progress, **options: Any) -> RunResult:
    """Counterfactuals of ``scan`` (or of every row of the ``batch`` CSV); ``options`` are EditParams
    fields (prompt, source_prompt, steps, guidance, mask, ...; None = the model's default)."""
    return run_operation("edit", scan, settings or RunSettings(), batch=batch, progress=progress, **options)


def run_inversions(scan: str | Path | None = None, settings: RunSettings | None = None, *,
                   batch: Path | None = None, progress: Progress = no_progress, **options: Any) -> RunResult:
    """DDIM inversions (latents, reconstruction, PSNR/SSIM) of ``scan`` or of the ``batch`` CSV's rows."""
    return run_operation("invert", scan, settings or RunSettings(), batch=batch, progress=progress, **options)


def _check_inputs(scan: str | Path | None, batch: Path | None, settings: RunSettings, mask: str | None) -> None:
    """Before anything is loaded: one source of scans, files that exist, sane settings."""
    if (scan is None) == (batch is None):
        raise UsageError("give one scan or --batch CSV (not both, not neither)")
    if settings.shard is not None and batch is None:
        raise UsageError("--shard takes a share of --batch rows; give --batch CSV")
    if scan is not None and not Path(scan).exists():
        raise ScanReadError(f"{scan}: file not found")
    from cfgen.io.tables import is_stdin

    if batch is not None and not is_stdin(batch) and not Path(batch).is_file():
        raise InputError(f"{batch}: CSV file not found")
    from cfgen.editing.jobs import check_mask_value

    check_mask_value(mask, "--mask")
    settings.check()
    _check_out(Path(settings.out), scan)
    if scan is not None and settings.fmt is not None and (Path(scan).is_file() or Path(scan).is_dir()):
        from cfgen.io.scan import check_output_format, format_of

        # one scan: its format from the name, before loading (batches: per item, before computing)
        check_output_format(format_of(Path(scan)), settings.fmt, scan)


def _check_out(out: Path, scan) -> None:
    """The output folder can hold the results: not a file, not the input, writable."""
    import os

    if scan is not None and out.resolve() == Path(scan).resolve():
        raise UsageError(f"--out {out}: is the input itself; choose another folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a folder")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: {existing} is not writable")


def _jobs(command: str, scan, batch, params: "EditParams", labelled: bool = False) -> list["Job"]:
    """``labelled``: the model generates anatomy labels, so each row's ``labels`` cell is its input."""
    from cfgen.editing.jobs import jobs_from_csv, require_prompt, single_job

    need_prompt = command == "edit"
    if batch is not None:
        return jobs_from_csv(Path(batch), params, need_prompt=need_prompt, labelled=labelled)
    if need_prompt:
        require_prompt(params.prompt, "--prompt is required: the text of the counterfactual")
    return [single_job(str(scan), params)]


def _report_params(params: "EditParams", model_name: str, batch, s: RunSettings) -> dict[str, Any]:
    return {**params.as_dict(), "model": model_name, "batch": str(batch) if batch else None, "format": s.fmt,
            "device": s.device, "dtype": s.dtype, "overwrite": s.overwrite, "batch_size": s.batch_size or "auto",
            "compile": s.compile, "workers": s.workers or "auto", "shard": s.shard,
            "figure_format": s.figure_format, "difference_range": s.difference_range}


def _check_prompts(model: "LoadedModel", jobs: list, strict: bool) -> None:
    """Each job's prompts against the text encoder (length, characters): warnings on the job, or
    with ``strict`` a usage error before anything is computed."""
    from cfgen.editing.components import prompt_problems

    seen: dict[str, list[str]] = {}
    for job in jobs:
        p = job.params
        for text in dict.fromkeys((p.prompt, p.source_prompt, p.negative_prompt)):
            if text not in seen:
                seen[text] = prompt_problems(model, text)
            job.warnings += seen[text]
        if strict and job.warnings:
            raise UsageError(f"{job.label()}: {job.warnings[0]} (--strict)")


def _load(s: RunSettings, shard: "Shard", n_items: int, report: "RunReport") -> tuple["LoadedModel", int, int | None]:
    """The model (loaded here unless given), its memory plan and speed settings; the batch size and
    the VAE chunk size (items per encode/decode call; None: the whole batch) to use."""
    from cfgen.editing import memory
    from cfgen.editing.speed import tune
    from cfgen.models.loader import LoadedModel, load_model

    t1 = time.perf_counter()
    loaded = s.model if isinstance(s.model, LoadedModel) else \
        load_model(s.model, device=shard.device or s.device, dtype=s.dtype)
    report.set_model(loaded.report_info(), loaded.device)
    size, plan = s.batch_size, None
    if size is None or str(loaded.device).startswith("cuda"):  # VAE slices/tiles when memory is short
        plan = memory.plan(loaded, n_items, size)  # before compiling: the probe's shapes are its own
        memory.apply(loaded, plan)
        size = plan.batch_size
    report.data["speed"] = tune(loaded, s.compile)
    if plan is not None:
        report.data["speed"]["memory"] = plan.record()
    report.data["timings"]["model_load_s"] = round(time.perf_counter() - t1, 3)
    return loaded, size, plan.vae_chunk if plan is not None else None


def check_selector(params: "EditParams") -> None:
    """--sweep: the model that selects among the variants exists and scores (before any loading)."""
    from cfgen.models.loader import entry_for

    if not params.sweep:
        return
    if not params.select_by:
        raise UsageError("--sweep needs a model to select the best variant with: --select-by NAME "
                         "(a clip or classifier entry of models.toml)")
    family = entry_for(params.select_by).family
    if family not in ("clip", "classifier"):
        raise UsageError(f"--select-by {params.select_by}: the sweep scores with a model of family clip or "
                         f"classifier; this one is {family}")


def load_selector(params: "EditParams", loaded: "LoadedModel") -> "LoadedModel | None":
    """The sweep's scorer on the edit model's device, or None without a sweep."""
    from cfgen.models.loader import load_model

    if not params.sweep:
        return None
    return load_model(params.select_by, device=str(loaded.device), dtype="float32", family=("clip", "classifier"),
                      option="--select-by")


def check_model_options(params: "EditParams", loaded: "LoadedModel") -> None:
    """--attention or --solver on a model that cannot take them, label channels through a learned
    autoencoder: refused before any scan is read (--labels itself: labelled.check_params)."""
    from cfgen.editing import labelled

    labelled.check_lossless(loaded)
    if params.solver != "ddim":
        from cfgen.editing.dpm import check_solver

        check_solver(params.solver, loaded.entry.scheduler)
    if params.attention != "none":
        from cfgen.editing.attention import supported

        why = supported(loaded)
        if why:
            raise UsageError(why)


def _selector(params: "EditParams", loaded: "LoadedModel", report: "RunReport") -> "LoadedModel | None":
    check_model_options(params, loaded)
    selector = load_selector(params, loaded)
    if selector is not None:
        report.data["selector"] = selector.report_info()
    return selector


def run_operation(command: str, scan: str | Path | None, settings: RunSettings, *, batch: Path | None = None,
                  progress: Progress = no_progress, **options: Any) -> RunResult:
    """`command` ("edit" or "invert") over one scan or a batch CSV into ``settings.out``; the report
    is on disk (``report.json``) and returned. Several processes (accelerate launch) share the jobs."""
    from cfgen.editing import labelled
    from cfgen.editing.operations import operation
    from cfgen.editing.params import EditParams
    from cfgen.editing.runner import run_jobs
    from cfgen.editing.shard import Shard
    from cfgen.models.loader import LoadedModel, entry_for
    from cfgen.report import RunReport

    _check_inputs(scan, batch, settings, options.get("mask"))
    t0 = time.perf_counter()
    given = settings.model if isinstance(settings.model, LoadedModel) else None
    entry = given.entry if given is not None else entry_for(settings.model)
    params = EditParams.resolve(entry.defaults, command, **options)
    params.check()
    check_selector(params)
    labelled.check_params(params, entry, command, batch is not None)
    jobs = _jobs(command, scan, batch, params, bool(labelled.label_names(entry)))
    name = entry.name if given is not None or settings.model is None else str(settings.model)
    report_params = _report_params(params, name, batch, settings)
    out = Path(settings.out)
    report = RunReport(command, out, report_params)
    shard = Shard(settings.device)  # several processes (accelerate launch): jobs r, r + N, ... each
    mine = shard.take(shard_share(jobs, settings.shard))
    if shard.size > 1:
        report.path = shard.partial_path(out)
    loaded, size, vae_chunk = _load(settings, shard, len(mine), report)
    op = operation(command, _selector(params, loaded, report))
    _check_prompts(loaded, mine, settings.strict)
    journal = _journal(out, command, report_params, jobs, settings.shard, report, launched=shard.size > 1)
    report.write_progress()  # params and model on disk before the first item
    k = max(1, round(params.strength * params.steps))
    try:
        with progress(len(mine), 2 * k) as (on_item, on_step):
            run_jobs(op, loaded, mine, out, report, fmt=settings.fmt, figures=settings.figures,
                     overwrite=settings.overwrite,
                     on_item=on_item, on_step=on_step, batch_size=size, io_threads=settings.workers,
                     vae_chunk=vae_chunk)
    finally:
        journal.close()
    report.data["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    report.html = shard.size == 1  # written once, with the final report; under a launcher the merged one
    report.write()
    if shard.size == 1:
        return RunResult(report)
    return _merge(command, out, report, report_params, shard, jobs, t0)


def _journal(out: Path, command: str, report_params: dict, jobs: list, shard_text: str | None,
             report: "RunReport", launched: bool):
    """This process's journal in OUT, and the run's item names beside it (what `cfgen report`
    merges over). Under a launcher the main process merges the partial reports instead."""
    from cfgen.journal import Journal, write_jobs

    out.mkdir(parents=True, exist_ok=True)
    journal = Journal(out, shard_text)
    names = [j.name for j in jobs]
    report.attach_journal(journal, None if launched else names)
    write_jobs(out, names, {"command": command, "params": report_params})
    return journal


def _merge(command: str, out: Path, report: "RunReport", report_params: dict, shard: "Shard", jobs: list,
           t0: float) -> RunResult:
    """Sharded runs: after a barrier the main process merges the partial reports into one."""
    from cfgen.report import RunReport

    shard.wait()
    if not shard.main:
        return RunResult(report, main=False)
    merged = RunReport(command, out, report_params)
    merged.set_model(report.data["model"], report.data["device"])
    merged.data["timings"] = dict(report.data["timings"])
    shard.merge(out, merged, jobs)
    merged.html = True
    merged.data["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    merged.write()
    return RunResult(merged)
