"""`cfgen edit --batch` under a launcher with 2 processes (torchrun, as accelerate launch does):
each process takes its share, one merged report in CSV order, outputs equal to one process."""
from __future__ import annotations

import pytest

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from cfgen.editing.shard import Shard


def test_shares_are_disjoint_and_cover_the_jobs(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    one = Shard("cpu")
    assert (one.rank, one.size, one.device) == (0, 1, None)
    jobs = list(range(7))
    shares = []
    for r in range(3):
        s = Shard("cpu")
        s.rank, s.size = r, 3
        shares.append(s.take(jobs))
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]


def _images(folder, n):
    from cfgen.phantoms import cxr

    folder.mkdir()
    rows = ["image,prompt,seed"]
    for i in range(n):
        exo, attrs = cxr.subject(3, i)
        img = cxr.render_clean(exo, attrs, 32)
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(folder / f"p{i}.png")
        rows.append(f"p{i}.png,Chest X-ray showing Pleural Effusion,{i}")
    (folder / "jobs.csv").write_text("\n".join(rows) + "\n")
    return folder / "jobs.csv"


@pytest.mark.slow
def test_two_processes_edit_a_batch_into_one_report(tiny_model, cli, tmp_path):
    csv = _images(tmp_path / "in", 5)
    args = ["edit", "--batch", str(csv), "-m", str(tiny_model), "--steps", "3", "--device", "cpu", "-q",
            "--figure-format", "none"]  # what is shared between processes, not figures
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
              "-m", "cfgen.cli.main"]
    out = tmp_path / "two"
    proc = subprocess.run(launch + args + ["-o", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["processes"] == 2 and set(report["timings"]) >= {"process_0_s", "process_1_s", "total_s"}
    assert [it["name"] for it in report["items"]] == [f"p{i}" for i in range(5)]  # CSV order
    assert report["summary"]["ok"] == 5 and not (out / ".shards").exists()
    # the same items as one process computes
    assert cli(*args, "-o", tmp_path / "one").exit_code == 0
    # (equal up to float rounding: the launched processes run 1 thread, this one the default, and
    # a different thread count reorders float sums; a different seed or item differs by far more)
    def png(folder, i):
        return np.asarray(Image.open(folder / f"p{i}" / "counterfactual.png")).astype(np.int16)

    for i in range(5):
        diff = np.abs(png(out, i) - png(tmp_path / "one", i))
        assert diff.max() <= 2 and diff.mean() < 0.1, (i, diff.max(), diff.mean())
        assert np.abs(png(out, i) - png(tmp_path / "one", (i + 1) % 5)).mean() > 5
    # resumed with two processes: every item is found done
    proc = subprocess.run(launch + args + ["-o", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((out / "report.json").read_text())
    assert again["summary"]["skipped"] == 5 and again["summary"]["ok"] == 0
