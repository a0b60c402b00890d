"""Run a benchmark script as a user does (its own process, `python benchmarks/NAME --json FILE`)
and give back its results and what it printed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def run_benchmark(name: str, tmp_path: Path, *args, env: dict[str, str] | None = None) -> tuple[dict, str]:
    out = tmp_path / f"{Path(name).stem}.json"
    proc = subprocess.run([sys.executable, str(BENCHMARKS / name), *map(str, args), "--json", str(out)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout
