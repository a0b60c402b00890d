"""The edit fast path's safety nets: a half-precision batch with non-finite values is redone in
float32, the VAE runs in slices that equal the whole batch, `--batch-size auto` picks a batch
from measured per-item memory, and reading/writing overlaps the computation without changing
what is written."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from cxr_inputs import cxr_pngs
from schema import validate_report

from cfgen.editing import memory
from cfgen.editing.components import decode_latents, encode_images
from cfgen.editing.batch import RunSettings, run_edits
from cfgen.editing.speed import cast, full_precision
from cfgen.models.loader import load_model


def _csv(folder, n):
    rows = ["image,prompt,seed"] + [f"{name},Chest X-ray showing Cardiomegaly,{i}"
                                    for i, name in enumerate(cxr_pngs(folder, n, seed=11))]
    (folder / "jobs.csv").write_text("\n".join(rows) + "\n")
    return folder / "jobs.csv"


def _run(model, csv, out, batch_size=2):
    """The library's whole run (what `cfgen edit --batch` calls) on an already loaded model."""
    settings = RunSettings(out=out, model=model, device="cpu", batch_size=batch_size)
    return run_edits(batch=csv, settings=settings, steps=3, guidance=3.0, mask="none").report.data["items"]


def test_a_half_precision_batch_with_non_finite_values_is_redone_in_float32(tiny_model, tmp_path):
    csv = _csv(tmp_path / "in", 3)
    model = load_model(str(tiny_model), device="cpu")
    with torch.no_grad():  # a decoder whose last layer overflows float16 (max 65504) but not float32
        model.vae.decoder.conv_out.weight.mul_(3e5)
    cast(model, torch.float16)  # what a GPU load of this 2D model with --dtype float16 holds
    cast(model, torch.float32)  # the reference: the same (float16-rounded) weights in float32
    ref = _run(model, csv, tmp_path / "fp32")
    cast(model, torch.float16)
    items = _run(model, csv, tmp_path / "fp16")
    assert model.dtype == torch.float16 and model.vae.decoder.conv_out.weight.dtype == torch.float16  # restored
    assert [i["status"] for i in items] == ["ok"] * 3
    assert all(i["precision"] == "float32 (the float16 pass gave non-finite values)" for i in items)
    assert all("precision" not in i for i in ref)
    validate_report(json.loads((tmp_path / "fp16" / "report.json").read_text()))
    for i in range(3):
        a = np.asarray(Image.open(tmp_path / "fp16" / f"p{i}" / "counterfactual.png"), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "fp32" / f"p{i}" / "counterfactual.png"), dtype=np.int16)
        assert np.abs(a - b).max() <= 1 and a.std() > 0  # the float32 result, not a black/white image


def test_full_precision_restores_the_loaded_weights_exactly(tiny_model):
    model = load_model(str(tiny_model), device="cpu")
    cast(model, torch.bfloat16)
    before = model.unet.conv_in.weight.detach().clone()
    with full_precision(model):
        assert model.unet.conv_in.weight.dtype == torch.float32 and model.dtype == torch.float32
    assert model.dtype == torch.bfloat16 and torch.equal(model.unet.conv_in.weight, before)


def test_full_precision_gives_back_mixed_precision_parts_as_loaded():
    """The 3D family keeps its tabular conditioner in float32 inside a half UNet; a float32 redo
    must not leave it (or anything else) in another dtype afterwards."""
    model = load_model("demo-brain", device="cpu", dtype="bfloat16")
    dtypes = lambda: {k: t.dtype for k, t in model.unet.named_parameters()}  # noqa: E731
    before = dtypes()
    assert {torch.float32, torch.bfloat16} <= set(before.values())  # both precisions are there
    with full_precision(model):
        assert set(dtypes().values()) == {torch.float32}
    assert dtypes() == before and model.dtype == torch.bfloat16


def test_sliced_vae_equals_the_whole_batch(tiny_model):
    model = load_model(str(tiny_model), device="cpu")
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    z_all, z_sliced = encode_images(model, x), encode_images(model, x, chunk=2)
    assert z_all.shape[0] == 5 and torch.allclose(z_all, z_sliced, atol=1e-5)
    y_all, y_sliced = decode_latents(model, z_all), decode_latents(model, z_all, chunk=1)
    assert torch.allclose(y_all, y_sliced, atol=1e-5) and y_all.abs().sum() > 0
    assert torch.allclose(decode_latents(model, z_all, chunk=3), y_all, atol=1e-5)  # a memory plan's chunk


def test_batch_choice_fills_the_free_memory_within_caps():
    assert memory.choose(10 * 2**30, 2**30, 64) == 7  # 0.7 x 10 GiB / 1 GiB
    assert memory.choose(10 * 2**30, 2**30, 4) == 4
    assert memory.choose(2**29, 2**30, 64) == 1  # not even one fits: batch 1 (then the VAE slices/tiles)
    assert memory.choose(None, 2**30, 64) == 1 and memory.choose(2**30, None, 64) == 1


def test_memory_plan_measures_a_real_probe_on_cpu(tiny_model):
    model = load_model(str(tiny_model), device="cpu")
    plan = memory.plan(model, n_jobs=3)
    if plan.measured_by is None:
        pytest.skip("no /proc/self/clear_refs here: the plan keeps batch 1")
    assert plan.measured_by == "vmhwm" and plan.free_mb > 0 and plan.unet_item_mb >= 0
    assert 1 <= plan.batch_size <= 3 and 1 <= plan.vae_chunk <= plan.batch_size and not plan.vae_tiling
    rec = plan.record()
    assert set(rec) >= {"batch_size", "vae_chunk", "free_mb", "unet_item_mb", "measured_by"}


def test_batch_size_auto_on_the_cli_records_its_plan(tiny_model, cli, tmp_path):
    csv = _csv(tmp_path / "in", 3)
    res = cli("edit", "--batch", csv, "-m", tiny_model, "--steps", "3", "--batch-size", "auto", "--workers", "3",
              "-q", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["params"]["batch_size"] == "auto" and rep["params"]["workers"] == 3
    validate_report(rep)
    mem = rep["speed"]["memory"]
    assert 1 <= mem["batch_size"] <= 3 and mem["vae_chunk"] >= 1
    assert [i["status"] for i in rep["items"]] == ["ok"] * 3
    bad = cli("edit", "--batch", csv, "-m", tiny_model, "--batch-size", "many", "-o", tmp_path / "bad")
    assert bad.exit_code == 2 and "--batch-size many" in bad.output
    bad = cli("edit", "--batch", csv, "-m", tiny_model, "--workers", "0", "-o", tmp_path / "bad")
    assert bad.exit_code == 2 and "--workers 0: must be between 1 and 64" in bad.output
    assert not (tmp_path / "bad").exists()


def test_overlapped_io_writes_every_item_once_in_job_order(tiny_model, tmp_path):
    csv = _csv(tmp_path / "in", 5)
    model = load_model(str(tiny_model), device="cpu")
    items = _run(model, csv, tmp_path / "out", batch_size=2)
    assert [i["name"] for i in items] == [f"p{i}" for i in range(5)]
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [i["name"] for i in rep["items"]] == [f"p{i}" for i in range(5)]
    for i in range(5):
        rec = json.loads((tmp_path / "out" / f"p{i}" / "item.json").read_text())
        assert rec["status"] == "ok" and (tmp_path / "out" / rec["outputs"]["counterfactual"]).is_file()
    again = _run(model, csv, tmp_path / "out", batch_size=2)  # resume: everything done
    assert [i["status"] for i in again] == ["skipped"] * 5


def test_host_work_runs_in_worker_threads_beside_the_model(tiny_model, tmp_path, monkeypatch):
    """Preparing a scan (window, resize) and finishing it (back to the scan's grid, metrics,
    encoding) run in the runner's worker threads, so that on a GPU they overlap the next batch;
    the thread that drives the model only computes."""
    import threading

    from cfgen.editing import core

    where: dict[str, set] = {"to_model": set(), "from_model": set(), "compute": set()}

    def spy(name, fn):
        def wrapped(*a, **k):
            where[name].add(threading.current_thread().name.split("_")[0])
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(core, "to_model", spy("to_model", core.to_model))
    monkeypatch.setattr(core, "from_model", spy("from_model", core.from_model))
    monkeypatch.setattr(core, "_run", spy("compute", core._run))
    csv = _csv(tmp_path / "in", 4)
    items = _run(load_model(str(tiny_model), device="cpu"), csv, tmp_path / "out", batch_size=2)
    assert [i["status"] for i in items] == ["ok"] * 4
    assert where == {"to_model": {"cfgen-io"}, "from_model": {"cfgen-io"}, "compute": {"MainThread"}}


def test_default_workers_share_the_cores_among_local_processes(monkeypatch):
    from cfgen.editing import runner

    monkeypatch.setattr(runner.os, "cpu_count", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert runner.default_workers() == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # accelerate launch, 4 processes on this machine
    assert runner.default_workers() == 3
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    assert runner.default_workers() == 2
