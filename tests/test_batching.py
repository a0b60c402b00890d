"""`--batch-size`: compatible jobs share every UNet forward; results equal one-by-one runs, a
failing batch falls back to one by one, incompatible rows run alone."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cfgen.editing.jobs import Job
from cfgen.editing.params import EditParams
from cfgen.editing.runner import _chunks
from cxr_inputs import cxr_pngs


def _job(i: int, **kw) -> Job:
    return Job(image=f"p{i}.png", path=None, params=EditParams(prompt="x", **kw), name=f"p{i}", row=i)


def test_chunks_group_consecutive_compatible_jobs():
    jobs = [_job(0), _job(1), _job(2), _job(3, steps=7), _job(4, eta=0.5), _job(5), _job(6)]
    names = [[j.name for j in c] for c in _chunks(jobs, 2)]
    assert names == [["p0", "p1"], ["p2"], ["p3"], ["p4"], ["p5", "p6"]]
    assert [[j.name for j in c] for c in _chunks(jobs[:3], 1)] == [["p0"], ["p1"], ["p2"]]


def _inputs(folder, n):
    rows = ["image,prompt,seed,mask"] + [f"{name},Chest X-ray showing Cardiomegaly,{i},{'auto' if i == 1 else 'none'}"
                                         for i, name in enumerate(cxr_pngs(folder, n))]
    return folder, rows


def test_batched_edits_equal_one_by_one_and_a_bad_item_does_not_sink_its_batch(tiny_model, cli, tmp_path):
    folder, rows = _inputs(tmp_path / "in", 5)
    (folder / "broken.png").write_text("not an image")
    rows[3] = rows[3].replace(",none", ",broken.png")  # p2: its mask cannot be read inside the batch
    (folder / "jobs.csv").write_text("\n".join(rows) + "\n")
    common = ("edit", "--batch", folder / "jobs.csv", "-m", tiny_model, "--steps", "4", "--guidance", "3", "-q",
              "--figure-format", "none")
    res = cli(*common, "--batch-size", "4", "-o", tmp_path / "b4")
    assert res.exit_code == 1  # p2 failed
    res = cli(*common, "--batch-size", "1", "-o", tmp_path / "b1")
    assert res.exit_code == 1
    r4 = json.loads((tmp_path / "b4" / "report.json").read_text())
    r1 = json.loads((tmp_path / "b1" / "report.json").read_text())
    assert r4["params"]["batch_size"] == 4
    assert [i["name"] for i in r4["items"]] == [f"p{i}" for i in range(5)]
    assert [i["status"] for i in r4["items"]] == ["ok", "ok", "error", "ok", "ok"]
    assert "broken.png" in r4["items"][2]["error"] and r4["items"][2]["error"] == r1["items"][2]["error"]
    for i in (0, 1, 3, 4):
        a = np.asarray(Image.open(tmp_path / "b4" / f"p{i}" / "counterfactual.png"), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "b1" / f"p{i}" / "counterfactual.png"), dtype=np.int16)
        assert np.abs(a - b).max() <= 1  # the same computation up to float rounding of batched kernels
        assert r4["items"][i]["metrics"]["l1"] == pytest.approx(r1["items"][i]["metrics"]["l1"], abs=2e-3)
    assert "mask_fraction" in r4["items"][1]["metrics"] and "mask_fraction" not in r4["items"][0]["metrics"]


def test_batched_inversion_reports_each_item(tiny_model, cli, tmp_path):
    folder, rows = _inputs(tmp_path / "in", 3)
    (folder / "jobs.csv").write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")
    common = ("invert", "--batch", folder / "jobs.csv", "-m", tiny_model, "--steps", "4", "-q", "--figure-format", "none")
    assert cli(*common, "--batch-size", "3", "-o", tmp_path / "b3").exit_code == 0
    assert cli(*common, "-o", tmp_path / "b1").exit_code == 0
    b3, b1 = (json.loads((tmp_path / d / "report.json").read_text())["items"] for d in ("b3", "b1"))
    assert [i["status"] for i in b3] == ["ok"] * 3
    for key in ("psnr", "vae_psnr", "latent_rel_error"):  # per item, as one by one
        assert [i["metrics"][key] for i in b3] == pytest.approx([i["metrics"][key] for i in b1], rel=1e-3, abs=1e-5)
    assert len({i["metrics"]["psnr"] for i in b3}) == 3


@pytest.mark.slow
def test_throughput_benchmark_runs_and_the_fast_path_matches_fp32(monkeypatch, capsys):
    import edit_throughput  # benchmarks/ is on the tests' path (pyproject.toml)

    monkeypatch.setenv("CFGEN_COMPILE_BACKEND", "eager")  # dynamo tracing without a C compiler run
    res = edit_throughput.main(["--preset", "tiny", "--device", "cpu", "--dtype", "float32", "--steps", "3", "--batch-sizes", "2",
                    "--batches", "1", "--plain-edits", "1", "--compile", "--no-cpu-side", "--files", "3",
                    "--file-size", "300x200"])
    g = res["gpu"]
    assert g["unet_tflop_per_forward"] > 0 and g["plain"]["edits_per_s"] > 0
    assert [(r["batch"], r["compiled"]) for r in g["rows"]] == [(2, False), (2, True)]
    for r in g["rows"]:
        assert r["edits"] == r["batch"] and r["forwards_per_s"] == pytest.approx(r["edits_per_s"] * 9)
        assert r["psnr_vs_fp32"] > 60  # fp32 fast path: the same edit as the reference, batched or compiled
    assert 1 <= g["auto_plan"]["batch_size"] <= 8 and g["auto_plan"]["vae_chunk"] >= 1
    f = g["files"]  # (c): three 300x200 16-bit PNGs through run_jobs, batch 2, compiled
    assert (f["ok"], f["batch"], f["compiled"], f["file_size"]) == (3, 2, True, [300, 200])
    assert f["edits_per_s"] > 0 and f["model_only_edits_per_s"] == g["rows"][1]["edits_per_s"]
    assert f["host_prepare_s"] > 0 and f["host_finish_write_s"] > 0
    out = capsys.readouterr().out
    assert "x plain" in out and "--batch-size auto would choose" in out and "(c) end to end on 3 300x200" in out
