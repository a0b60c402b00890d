"""The run report: ``report.json`` in every output folder, the machine-readable contract.

Schema (documented in the README, version in ``schema``)::

  {"schema": 1, "command": "edit", "cfgen_version": "...", "created": "ISO-8601",
   "model": {"name", "source", "revision", "sha256": {file: hex}, ...},
   "params": {...all effective options...}, "seed": 0, "device": "cpu",
   "timings": {"total_s": ..., "model_load_s": ...},
   "items": [{"input", "name", "status": "ok|error|skipped", "error", "seed",
              "outputs": {kind: path relative to the output folder}, "metrics": {...}}],
   "summary": {"ok": N, "error": N, "skipped": N,
               "metrics": {name: {"mean", "std", "ci95": [low, high], "n"} over ok+skipped items}}}
"""
from __future__ import annotations

import datetime as _dt
import math
import time
from pathlib import Path
from typing import Any

from cfgen import __version__
from cfgen.io.atomic import write_json

SCHEMA_VERSION = 1
STATUSES = ("ok", "error", "skipped")
#: while items come in, report.json is rewritten at most this often (the summary at the end)
PROGRESS_EVERY_S = 2.0


def summarize_metrics(items: list[dict]) -> dict[str, Any]:
    """Per metric over the items that did not fail: mean, std, 95% bootstrap interval, n."""
    from cfgen.metrics.stats import describe

    values: dict[str, list[float]] = {}
    for it in items:
        if it.get("status") == "error":
            continue
        for k, v in (it.get("metrics") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                values.setdefault(k, []).append(float(v))
    return {k: describe(v) for k, v in sorted(values.items())}


class RunReport:
    def __init__(self, command: str, out_dir: Path, params: dict[str, Any]):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "report.json"
        self.data: dict[str, Any] = {
            "schema": SCHEMA_VERSION, "command": command, "cfgen_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": None, "params": params, "seed": params.get("seed"), "device": None,
            "timings": {}, "items": [], "summary": {},
        }
        self._last_progress = -math.inf
        self._progress_cost = 0.0
        self.own: list[dict[str, Any]] = []  # this process's items (report.json may merge others': journal)
        self.journal = None  # cfgen.journal.Journal: every item appended as it finishes
        self.names: list[str] | None = None  # with a journal: report.json merges all journals over these
        self.html = False  # also write OUT/report.html (cfgen/viz/html.py) with the whole report
        self.html_images: list[str] = []  # run-level figures for its gallery (evaluate's examples)

    def attach_journal(self, journal, names: list[str] | None) -> None:
        """Append every item to ``journal``; with ``names``, write() merges every journal in the
        folder over them (several processes on one OUT), else this process's items alone."""
        self.journal, self.names = journal, names

    def set_model(self, info: dict[str, Any], device: str) -> None:
        self.data["model"] = info
        self.data["device"] = device

    def add_item(self, item: dict[str, Any], journal: bool = True) -> None:
        """``journal`` False: an item this process did not do (another process is computing it)."""
        assert item.get("status") in STATUSES, item
        self.data["items"].append(item)
        self.own.append(item)
        if journal and self.journal is not None:
            self.journal.append(item)

    def summarize(self) -> dict[str, Any]:
        items = self.data["items"]
        summary = {s: sum(1 for it in items if it["status"] == s) for s in STATUSES}
        summary["metrics"] = summarize_metrics(items)
        self.data["summary"] = summary
        return summary

    def write(self) -> Path:
        """The whole report, summary (bootstrap intervals) included; with a journal and names, the
        items of every process that journalled into this folder (the latest record of each)."""
        if self.names is not None:
            from cfgen.journal import in_progress, merged

            self.data["items"], missing = merged(self.out_dir, self.names)
            self.data["missing"] = missing
            self.data["in_progress"] = in_progress(self.out_dir, missing)
        self.summarize()
        path = write_json(self.path, self.data)
        if self.html:
            from cfgen.viz.html import write_html_report

            write_html_report(self.data, self.out_dir, [self.out_dir / name for name in self.html_images])
        return path

    def write_progress(self) -> None:
        """The items so far, without the summary, at most every PROGRESS_EVERY_S seconds and never
        more than a twentieth of the time: the cost per item stays flat in a batch of 100,000."""
        now = time.monotonic()
        if now - self._last_progress >= max(PROGRESS_EVERY_S, 20 * self._progress_cost):
            write_json(self.path, self.data)
            self._last_progress = time.monotonic()
            self._progress_cost = self._last_progress - now

    @property
    def failed(self) -> int:
        """Items of this process that failed (the exit code's business)."""
        return sum(1 for it in self.own if it["status"] == "error")


def rebuild(out_dir: Path) -> RunReport:
    """``cfgen report OUT``: report.json from the journals of every process that wrote into OUT
    (shards still running included: what they have not finished is listed as missing)."""
    import json

    from cfgen.errors import InputError
    from cfgen.journal import read_jobs

    out_dir = Path(out_dir)
    jobs = read_jobs(out_dir)
    if jobs is None:
        raise InputError(f"{out_dir}: no item journal (.journal/jobs.json); not the output folder of "
                         "cfgen edit or invert, or written before journals")
    report = RunReport(str(jobs.get("command", "edit")), out_dir, dict(jobs.get("params") or {}))
    try:
        old = json.loads(report.path.read_text(encoding="utf-8"))
        report.set_model(old.get("model"), old.get("device"))
    except (OSError, ValueError, AttributeError):
        pass  # the journals alone are enough
    report.names = [str(n) for n in jobs["names"]]
    report.html = True
    report.write()
    return report
