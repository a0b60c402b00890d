"""The item journal: what every process working on one output folder has finished.

Layout under OUT::

  .journal/<writer>.jsonl   one JSON line per finished item, appended by one process (host, pid,
                            start time in its name) and flushed when the item's files are in
                            place; a killed process leaves at most one cut last line, which
                            readers skip
  .journal/jobs.json        the run's item names in CSV order (every shard writes the same list)
  <name>/.claim             an item being computed: created exclusively, removed when it is done

``report.json`` is the merge of all journals over ``jobs.json`` (the latest record of each item;
names no journal holds are listed under ``missing``), written when a process finishes and by
``cfgen report OUT`` at any time. Bookkeeping per item is one appended line: flat in the number
of items (benchmarks/batch_overhead.py).
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from cfgen.io.atomic import write_json

JOURNAL_DIR = ".journal"
JOBS_FILE = "jobs.json"
CLAIM_FILE = ".claim"
#: a claim of another host older than this is taken to be left by a killed process
CLAIM_STALE_S = 3600.0


class Journal:
    """One process's append-only log of finished items."""

    def __init__(self, out_dir: Path, shard: str | None = None):
        self.dir = Path(out_dir) / JOURNAL_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        tag = f"-shard{shard.replace('/', 'of')}" if shard else ""
        self.writer = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}{tag}"
        self.path = self.dir / f"{self.writer}.jsonl"
        self._fh = open(self.path, "a", encoding="utf-8")

    def append(self, item: dict[str, Any]) -> None:
        self._fh.write(json.dumps({**item, "journal_t": time.time()}, default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def write_jobs(out_dir: Path, names: list[str], header: dict[str, Any]) -> None:
    write_json(Path(out_dir) / JOURNAL_DIR / JOBS_FILE, {"names": names, **header})


def read_jobs(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(out_dir) / JOURNAL_DIR / JOBS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("names"), list) else None


def records(out_dir: Path) -> Iterator[dict[str, Any]]:
    """Every complete record of every journal in OUT (cut or foreign lines skipped)."""
    folder = Path(out_dir) / JOURNAL_DIR
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # the cut last line of a killed process
            if isinstance(rec, dict) and isinstance(rec.get("name"), str):
                yield rec


def merged(out_dir: Path, names: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """(the latest record of each of ``names`` in their order, the names no journal holds)."""
    latest: dict[str, dict[str, Any]] = {}
    for rec in records(out_dir):
        old = latest.get(rec["name"])
        if old is None or rec.get("journal_t", 0) >= old.get("journal_t", 0):
            latest[rec["name"]] = rec
    items = [{k: v for k, v in latest[n].items() if k != "journal_t"} for n in names if n in latest]
    return items, [n for n in names if n not in latest]


def in_progress(out_dir: Path, names: list[str]) -> list[str]:
    """Those of ``names`` whose item folder holds a claim (a process is computing them)."""
    return [n for n in names if (Path(out_dir) / n / CLAIM_FILE).exists()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(folder: Path) -> str | None:
    """Claim an item folder for this process: None when claimed, else who holds it. A claim left
    by a process that is gone (same host: its pid is not running; another host: older than
    CLAIM_STALE_S) is taken over."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CLAIM_FILE
    me = {"host": socket.gethostname(), "pid": os.getpid(), "t": time.time()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None and _age(path) < 10:  # created this instant, not written yet
                return "another process (just claimed)"
            if holder is not None and not _stale(holder):
                if holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
                    return None  # this process's own claim (a retried item)
                return f"{holder.get('host')} pid {holder.get('pid')}"
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        return None
    return "another process (the claim could not be taken)"


def _holder(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # being written this instant, or garbage: treated as stale below
    return data if isinstance(data, dict) else None


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def _stale(holder: dict[str, Any]) -> bool:
    if holder.get("host") == socket.gethostname():
        return not isinstance(holder.get("pid"), int) or not _alive(holder["pid"])
    return time.time() - float(holder.get("t", 0) or 0) > CLAIM_STALE_S


def release(folder: Path) -> None:
    """Drop this process's claim; an item folder that holds nothing else (the item failed before
    writing anything) goes too."""
    folder = Path(folder)
    (folder / CLAIM_FILE).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (the item's files), or already gone
