"""kill -9 part way through a batch edit and a finetune, then re-run: nothing lost or redone."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cfgen.cli.main", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() - t0 < timeout, "timed out waiting"
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_batch_edit_resumes_without_redoing_or_corrupting(tiny_model, ct_small, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ct.dcm").write_bytes(ct_small.read_bytes())
    rows = ["image,prompt,output"] + [f"ct.dcm,edit {i},item{i}" for i in range(6)]
    (data / "jobs.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    args = ["edit", "--batch", str(data / "jobs.csv"), "-m", str(tiny_model), "-o", str(out), "--steps", "30", "-q",
            "--figure-format", "none"]
    proc = _start(args, tmp_path)
    _wait_for(lambda: len(list(out.glob("*/item.json"))) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.parent.name: p.parent.joinpath("counterfactual.dcm").stat().st_mtime_ns for p in out.glob("*/item.json")}
    assert 2 <= len(done) < 6
    # every finished item is complete and readable; nothing half-written under a final name
    from cfgen.io.scan import read_scan

    for name in done:
        read_scan(out / name / "counterfactual.dcm")
    json.loads((out / "report.json").read_text())
    proc = _start(args, tmp_path)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    rep = json.loads((out / "report.json").read_text())
    status = {it["name"]: it["status"] for it in rep["items"]}
    assert all(status[n] == "skipped" for n in done) and sum(s == "ok" for s in status.values()) == 6 - len(done)
    for name, mtime in done.items():
        assert (out / name / "counterfactual.dcm").stat().st_mtime_ns == mtime
    assert not list(out.rglob(".tmp-*"))


@pytest.mark.slow
def test_killed_finetune_resumes_from_its_last_checkpoint(tiny_model, tmp_path):
    from cfgen.phantoms.dataset import write_cxr_dataset

    write_cxr_dataset(tmp_path / "ph", 8, seed=2, size=32, counterfactuals=False, workers=1)
    csv = tmp_path / "ph" / "labels.csv"
    common = ["finetune", str(csv), "-m", str(tiny_model), "--template", "chexpert", "--batch-size", "4",
              "--learning-rate", "1e-3", "--max-steps", "40", "--checkpoint-every", "2", "--keep-checkpoints", "2", "-q"]
    ref = _start([*common, "-o", str(tmp_path / "ref")], tmp_path)  # the uninterrupted run, alongside
    run = tmp_path / "run"
    proc = _start([*common, "-o", str(run)], tmp_path)
    _wait_for(lambda: len(list((run / "checkpoints").glob("step-*/state.json"))) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ref.wait(timeout=600) == 0, ref.stderr.read().decode()[-2000:]
    last = max(int(p.parent.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*/state.json"))
    assert 2 <= last < 40
    proc = _start([*common, "-o", str(run), "--resume"], tmp_path)
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
    tr = json.loads((run / "report.json").read_text())["training"]
    assert tr["start_step"] >= last and tr["final_step"] == 40
    a = load_file(tmp_path / "ref" / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(run / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy())
