"""`cfgen finetune`: loss goes down, only the UNet changes, exact resume, bad rows, 2 processes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from cfgen.models.loader import load_model
from schema import validate_report

UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def phantom_csv(tmp_path_factory) -> Path:
    from cfgen.phantoms.dataset import write_cxr_dataset

    root = tmp_path_factory.mktemp("ph")
    write_cxr_dataset(root, 12, seed=5, size=32, counterfactuals=False, workers=1)
    return root / "labels.csv"


def _train(cli, csv, model, out, *extra):
    res = cli("finetune", csv, "-m", model, "-o", out, "--template", "chexpert", "--batch-size", "4",
              "--learning-rate", "1e-3", "-q", *extra)
    return res


def test_finetune_learns_trains_only_the_unet_and_the_result_edits(cli, tiny_model, phantom_csv, tmp_path, ct_small):
    out = tmp_path / "run"
    res = _train(cli, phantom_csv, tiny_model, out, "--max-steps", "8", "--checkpoint-every", "4",
                 "--validation-prompt", "Chest X-ray showing Cardiomegaly", "--validation-prompt", "", "--ema",
                 "--ema-decay", "0.5", "--snr-gamma", "5", "--noise-offset", "0.05")
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    validate_report(rep)
    tr = rep["training"]
    assert tr["final_step"] == 8 and tr["start_step"] == 0 and len(tr["losses"]) == 8
    assert tr["eval_loss_end"] < tr["eval_loss_start"]
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-0000004", "step-0000008"]
    assert (out / "validation" / "final.png").is_file()
    for comp in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (out / "model" / comp).read_bytes() == (tiny_model / comp).read_bytes()
    before, after = load_file(tiny_model / UNET), load_file(out / "model" / UNET)
    assert max(float((before[k] - after[k]).abs().max()) for k in before) > 1e-4
    m = load_model(str(out / "model"))
    assert m.entry.resolution == 32 and m.entry.scheduler["beta_schedule"] == "scaled_linear"
    recipe = json.loads((out / "model" / "training.json").read_text())
    assert recipe["steps"] == 8 and recipe["config"]["ema"] is True
    res = cli("edit", ct_small, "-p", "Chest X-ray showing Pleural Effusion", "-m", out / "model",
              "-o", tmp_path / "edit", "--steps", "4", "-q")
    assert res.exit_code == 0, res.output


def test_resume_continues_exactly(cli, tiny_model, phantom_csv, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(cli, phantom_csv, tiny_model, a, "--max-steps", "6", "--checkpoint-every", "3").exit_code == 0
    assert _train(cli, phantom_csv, tiny_model, b, "--max-steps", "3", "--checkpoint-every", "3").exit_code == 0
    res = _train(cli, phantom_csv, tiny_model, b, "--max-steps", "6", "--checkpoint-every", "3")
    assert res.exit_code == 1 and "--resume" in res.stderr
    assert _train(cli, phantom_csv, tiny_model, b, "--max-steps", "6", "--checkpoint-every", "3",
                  "--resume").exit_code == 0
    rep = json.loads((b / "report.json").read_text())["training"]
    assert rep["start_step"] == 3 and rep["final_step"] == 6 and [s for s, _ in rep["losses"]] == [4, 5, 6]
    wa, wb = load_file(a / "model" / UNET), load_file(b / "model" / UNET)
    for k in wa:
        np.testing.assert_array_equal(wa[k].numpy(), wb[k].numpy())


def test_bad_rows_are_reported_and_training_goes_on(cli, tiny_model, phantom_csv, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantom_csv.parent / "images", data / "images")
    (data / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows = ["image,caption"] + [f"images/cxr_{i:05d}.png,Chest X-ray showing Cardiomegaly" for i in range(6)]
    rows += ["images/missing.png,Chest X-ray", "images/cxr_00007.png,", "images/broken.png,Chest X-ray"]
    (data / "train.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    res = cli("finetune", data / "train.csv", "-m", tiny_model, "-o", out, "--batch-size", "7", "--max-steps", "2",
              "-q")
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    errors = [it["error"] for it in rep["items"]]
    assert len(errors) == 2 and "missing.png: file not found" in errors[0] and "empty caption" in errors[1]
    skipped = rep["training"]["skipped_images"]
    assert skipped and all("broken.png" in s["error"] for s in skipped)
    assert rep["training"]["final_step"] == 2


def test_missing_caption_column_lists_columns(cli, tiny_model, phantom_csv, tmp_path):
    res = cli("finetune", phantom_csv, "-m", tiny_model, "-o", tmp_path / "o", "-q")
    assert res.exit_code == 1 and "no 'caption' column" in res.stderr and "Cardiomegaly" in res.stderr
    res = cli("finetune", phantom_csv, "-m", tiny_model, "-o", tmp_path / "o", "--mixed-precision", "fp8")
    assert res.exit_code == 2 and "--mixed-precision fp8" in res.stderr


@pytest.mark.slow
def test_two_processes_share_the_work(tiny_model, phantom_csv, tmp_path):
    """torchrun starts the same command twice; accelerate shards the data and syncs gradients."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "cfgen.cli.main", "finetune", str(phantom_csv), "-m", str(tiny_model), "-o", str(out),
           "--template", "chexpert", "--batch-size", "2", "--max-steps", "3", "--checkpoint-every", "3", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tr = json.loads((out / "report.json").read_text())["training"]
    assert tr["processes"] == 2 and tr["effective_batch"] == 4 and tr["final_step"] == 3
    assert (out / "checkpoints" / "step-0000003" / "weights.safetensors").is_file()
    load_model(str(out / "model"))


def test_vae_training_reduces_reconstruction_error_and_sets_the_scale(tiny_model, phantom_csv, tmp_path):
    from cfgen.training.vae import train_vae

    out = tmp_path / "vae"
    s = train_vae(phantom_csv, tiny_model, out, steps=30, batch_size=6, lr=2e-3, seed=0, device="cpu",
                  checkpoint_every=15)
    first = np.mean([v for _, v in s["losses"][:3]])
    last = np.mean([v for _, v in s["losses"][-3:]])
    assert last < first * 0.8
    assert s["scaling_factor"] == pytest.approx(1.0 / s["latent_std"])
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(out / "vae", use_safetensors=True)
    assert vae.config.scaling_factor == pytest.approx(s["scaling_factor"])
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-0000015", "step-0000030"]


def test_phantom_edit_benchmark_runs_on_any_model(tiny_model, capsys):
    import phantom_edits  # benchmarks/ is on the tests' path (pyproject.toml)

    res = phantom_edits.main(["--model", str(tiny_model), "--n", "1", "--steps", "3", "--masks", "none", "auto",
                    "--recon-per-type", "1", "--device", "cpu"])
    assert {r["edit"] for r in res["table"]} == {f"{v} {a}" for a in ("effusion", "cardiomegaly", "devices")
                                                 for v in ("remove", "add")}
    assert len(res["table"]) == 12 and all(r["err_none"] > 0 and r["psnr_rec"] is not None for r in res["table"])
    assert "ratio <= 0.50" in capsys.readouterr().out


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_the_x0_error_by_min_snr_gamma(prediction_type):
    """Min-SNR (Hang et al.): whatever the target, the weight on the implied x0 error is
    min(SNR, gamma). An epsilon error e is an x0 error e / sqrt(SNR), a v error e an x0 error
    e / sqrt(SNR + 1) (alpha_bar = SNR / (SNR + 1)), an x0 error itself."""
    import torch
    from diffusers import DDPMScheduler

    from cfgen.training.config import FinetuneConfig
    from cfgen.training.objectives import weighted_mse

    sched = DDPMScheduler(prediction_type=prediction_type)
    t = torch.tensor([10, 500, 990])
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    pred, target = torch.ones(3, 1, 4, 4), torch.zeros(3, 1, 4, 4)  # error 1 per element
    cfg = FinetuneConfig(snr_gamma=5.0)
    per_sample = torch.stack([weighted_mse(sched, pred[i:i + 1], target[i:i + 1], t[i:i + 1], cfg) for i in range(3)])
    x0_error = {"epsilon": 1 / snr, "v_prediction": 1 / (snr + 1), "sample": torch.ones(3)}[prediction_type]
    assert per_sample.tolist() == pytest.approx((torch.clamp(snr, max=5.0) * x0_error).tolist(), rel=1e-5)
    assert float(weighted_mse(sched, pred, target, t, FinetuneConfig())) == pytest.approx(1.0)  # no gamma: plain MSE


def test_auto_mask_benchmark_scores_settings_against_the_true_region(tiny_model):
    import auto_mask  # benchmarks/ is on the tests' path (pyproject.toml)

    res = auto_mask.main(["--model", str(tiny_model), "--n", "1", "--seed", "70000", "--levels", "0.5",
                          "--thresholds", "0.3", "0.6", "--dilations", "0", "1", "--draws", "1", "--device", "cpu"])
    assert len(res["rows"]) == 4 and {r["threshold"] for r in res["rows"]} == {0.3, 0.6}
    for r in res["rows"]:
        assert len(r["types"]) == 6 and all(0 <= v["recall"] <= 1 and 0 <= v["precision"] <= 1
                                            for v in r["types"].values())
    by = {(r["threshold"], r["dilate"]): r for r in res["rows"]}
    for kind in by[(0.3, 0)]["types"]:  # a lower threshold or a dilation never covers less
        assert by[(0.3, 0)]["types"][kind]["recall"] >= by[(0.6, 0)]["types"][kind]["recall"] - 1e-9
        assert by[(0.3, 1)]["types"][kind]["recall"] >= by[(0.3, 0)]["types"][kind]["recall"] - 1e-9


def test_report_to_tensorboard_writes_loss_learning_rate_and_images(cli, tiny_model, phantom_csv, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    res = _train(cli, phantom_csv, tiny_model, out, "--max-steps", "3", "--report-to", "tensorboard",
                 "--validation-prompt", "Chest X-ray showing Cardiomegaly")
    assert res.exit_code == 0, res.output
    run_dir = out / "logs" / "finetune"  # accelerate's project folder; hparams go in subfolders of it
    assert list(run_dir.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    losses = acc.Scalars("train/loss")
    rep = json.loads((out / "report.json").read_text())
    assert [e.step for e in losses] == [1, 2, 3]
    assert [round(e.value, 4) for e in losses] == [round(v, 4) for _, v in rep["training"]["losses"]]
    assert len(acc.Scalars("train/learning_rate")) == 3 and "validation" in acc.Tags()["images"]
    assert rep["params"]["mixed_precision"] == "no"  # accelerate's default when nothing says otherwise


def test_mixed_precision_follows_accelerate_and_report_to_is_checked(cli, tiny_model, phantom_csv, tmp_path):
    # as `accelerate launch --mixed_precision bf16` tells its processes (a fresh process: accelerate's
    # state is one per process)
    env = {**os.environ, "ACCELERATE_MIXED_PRECISION": "bf16", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "cfgen", "finetune", str(phantom_csv), "-m", str(tiny_model), "-o",
                           str(tmp_path / "bf"), "--template", "chexpert", "--batch-size", "2", "--max-steps", "1", "-q"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "bf" / "report.json").read_text())["params"]["mixed_precision"] == "bf16"
    res = _train(cli, phantom_csv, tiny_model, tmp_path / "x", "--max-steps", "1", "--report-to", "wandb")
    assert res.exit_code == 2 and "--report-to wandb: use one of tensorboard" in res.stderr
