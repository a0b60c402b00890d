"""Several processes on one batch (``accelerate launch ... cfgen edit --batch``).

Process r of N takes jobs r, r + N, r + 2N, ... of the CSV (deterministic: the same command gives
every process the same share, so a resumed run finds its own finished items). Each process
writes its items' folders and a partial report under ``OUT/.shards/``; after a barrier the main
process merges them, in CSV order, into the one ``OUT/report.json`` and removes the partials.
Resume works per item as with one process (``item.json`` marks a finished item).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

SHARD_DIR = ".shards"


def world() -> int:
    """Processes launched together (accelerate launch / torchrun set WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


class Shard:
    """This process's place among the launched processes, with a barrier between them."""

    def __init__(self, device: str):
        self.state = None
        self.rank, self.size = 0, world()
        if self.size > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=device == "cpu")
            self.rank, self.size = self.state.process_index, self.state.num_processes

    @property
    def device(self) -> str | None:
        return str(self.state.device) if self.state is not None else None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def take(self, jobs: list) -> list:
        return jobs[self.rank::self.size]

    def partial_path(self, out: Path) -> Path:
        return Path(out) / SHARD_DIR / f"report-{self.rank:03d}-of-{self.size:03d}.json"

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def merge(self, out: Path, report, jobs: list) -> None:
        """Main process: the partial reports' items, in job order, into ``report``."""
        order = {j.name: i for i, j in enumerate(jobs)}
        items, timings = [], {}
        for k in range(self.size):
            path = Path(out) / SHARD_DIR / f"report-{k:03d}-of-{self.size:03d}.json"
            part = json.loads(path.read_text(encoding="utf-8"))
            items += part["items"]
            timings[f"process_{k}_s"] = part["timings"].get("total_s")
        report.data["items"] = sorted(items, key=lambda it: order.get(it.get("name"), len(order)))
        report.own = list(report.data["items"])  # the launch's exit code covers every process's items
        report.data["timings"].update(timings)
        report.data["processes"] = self.size
        shutil.rmtree(Path(out) / SHARD_DIR, ignore_errors=True)
