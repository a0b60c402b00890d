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

    def set_model(self, info: dict[str, Any], device: str) -> None:
        self.data["model"] = info
        self.data["device"] = device

    def add_item(self, item: dict[str, Any]) -> None:
        assert item.get("status") in STATUSES, item
        self.data["items"].append(item)

    def summarize(self) -> dict[str, Any]:
        items = self.data["items"]
        summary = {s: sum(1 for it in items if it["status"] == s) for s in STATUSES}
        summary["metrics"] = summarize_metrics(items)
        self.data["summary"] = summary
        return summary

    def write(self) -> Path:
        """The whole report, summary (bootstrap intervals) included."""
        self.summarize()
        return write_json(self.path, self.data)

    def write_progress(self) -> None:
        """The items so far, at most every PROGRESS_EVERY_S seconds and without recomputing the
        summary, so that the cost per item stays flat in a batch of thousands."""
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            write_json(self.path, self.data)

    @property
    def failed(self) -> int:
        return sum(1 for it in self.data["items"] if it["status"] == "error")
