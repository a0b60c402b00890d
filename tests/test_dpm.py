"""--solver dpm++: DPM-Solver++(2M) sampling against diffusers' own solver, its matching inversion,
and the CLI option, on a tiny model loaded through cfgen's loader."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cfgen.editing import ddim, dpm
from cfgen.io.scan import read_scan

FEW = ["--steps", "6", "-q"]


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from cfgen.models.loader import load_model

    return load_model(str(tiny_model), device="cpu")


def _prompts(model, *texts):
    from cfgen.editing.components import encode_prompts

    return encode_prompts(model, list(texts)).chunk(len(texts))


@pytest.mark.parametrize("steps", [1, 8])
def test_sampling_equals_diffusers_dpm_solver_pp_2m(loaded, steps):
    """The same steps as diffusers' DPMSolverMultistepScheduler (2M, data prediction, midpoint,
    first order at the end) on DDIM's timesteps, with the real UNet and guidance."""
    from diffusers import DPMSolverMultistepScheduler

    cond, uncond = _prompts(loaded, "axial ct", "")
    ours = dpm.make_scheduler(loaded.entry.scheduler, steps, "dpm++")
    ref = DPMSolverMultistepScheduler.from_config(
        {k: v for k, v in loaded.entry.scheduler.items() if k != "kind"}, algorithm_type="dpmsolver++",
        solver_order=2, final_sigmas_type="sigma_min", lower_order_final=True)
    ref.set_timesteps(timesteps=ours.timesteps.tolist())
    zT = torch.randn((1, loaded.unet.config.in_channels, 8, 8), generator=torch.Generator().manual_seed(0))
    a = ddim.sample(loaded.unet, ours, zT, cond, ours.timesteps, uncond=uncond, guidance=5.0)
    b = zT
    with torch.no_grad():
        for t in ref.timesteps.tolist():
            b = ref.step(ddim.predict(loaded.unet, b, t, cond, uncond, 5.0), t, b).prev_sample
    assert torch.allclose(a, b, atol=1e-4 * float(b.abs().max()))
    if steps == 1:  # one step is first order: exactly DDIM's
        d = ddim.make_scheduler(loaded.entry.scheduler, steps)
        assert torch.allclose(a, ddim.sample(loaded.unet, d, zT, cond, d.timesteps, uncond=uncond, guidance=5.0),
                              atol=1e-5)


class _SmoothNoise(torch.nn.Module):
    """A smooth noise predictor (linear in z, varying with t), shaped like a diffusers UNet call."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.w = torch.randn(4, 4, generator=g) * 0.4
        self.b = torch.randn(1, 4, 1, 1, generator=g) * 0.3

    def forward(self, z, t, encoder_hidden_states=None):
        eps = torch.einsum("ij,bjhw->bihw", self.w, z) * (0.5 + float(t) / 1000) + self.b
        return type("Out", (), {"sample": eps})()


def test_inversion_matches_sampling_and_converges_with_steps(loaded):
    """Invert-then-sample under the same condition reconstructs, better with more steps, and the
    second-order pair converges faster than DDIM's."""
    net = _SmoothNoise()
    z0 = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    errors = {}
    for solver in ("ddim", "dpm++"):
        for steps in (5, 40):
            s = dpm.make_scheduler(loaded.entry.scheduler, steps, solver)
            traj = ddim.invert(net, s, z0, None, s.timesteps)
            assert (traj[-1] - z0).norm() > 0.5 * z0.norm()  # the inversion went somewhere, not a copy of z0
            rec = ddim.sample(net, s, traj[-1], None, s.timesteps)
            errors[solver, steps] = float((rec - z0).norm() / z0.norm())
    assert errors["ddim", 40] < errors["ddim", 5] / 3
    assert errors["dpm++", 40] < errors["dpm++", 5] / 3 and errors["dpm++", 40] < errors["ddim", 40], errors


def test_null_text_and_the_gate_take_repeated_steps(cli, tiny_model, ct_small, tmp_path):
    """Null-text calls the solver many times at one timestep and the gate samples twice over the
    same timesteps: the second-order memory must stay that of the committed steps."""
    items = {}
    for method in ("ddim", "null-text"):
        out = tmp_path / method
        res = cli("invert", ct_small, "-s", "axial ct", "-m", tiny_model, "-o", out, "--solver", "dpm++",
                  "--guidance", "6", "--inversion", method, "--null-text-steps", "5", *FEW)
        assert res.exit_code == 0, res.output
        items[method] = json.loads((out / "report.json").read_text())["items"][0]
    assert items["null-text"]["inversion"]["solver"] == "dpm++"
    psnr = {m: it["metrics"]["inversion_psnr"] for m, it in items.items()}
    assert psnr["null-text"] > psnr["ddim"] + 1
    out = tmp_path / "gate"
    res = cli("edit", ct_small, "-s", "axial ct", "-p", "axial ct", "-m", tiny_model, "-o", out, "--solver", "dpm++",
              "--guidance", "6", "--inversion", "negative-prompt", "--min-inversion-psnr", "20", *FEW)
    assert res.exit_code == 0, res.output
    item = json.loads((out / "report.json").read_text())["items"][0]
    assert item["inversion"]["gate"]["tries"][0]["psnr"] >= 20


def test_edit_with_dpm_differs_from_ddim_and_records_the_solver(cli, tiny_model, ct_small, tmp_path):
    outs = {}
    for solver in ("ddim", "dpm++"):
        out = tmp_path / solver
        res = cli("edit", ct_small, "-s", "axial ct", "-p", "big heart", "-m", tiny_model, "-o", out,
                  "--solver", solver, "--guidance", "6", *FEW)
        assert res.exit_code == 0, res.output
        item = json.loads((out / "report.json").read_text())["items"][0]
        assert item["inversion"]["solver"] == solver and item["params"]["solver"] == solver
        outs[solver] = read_scan(out / "CT_small" / "counterfactual.dcm").pixels
    assert np.abs(outs["ddim"] - outs["dpm++"]).max() > 5  # HU: a different solver, a different path


@pytest.mark.parametrize("args, word", [(["--solver", "euler"], "--solver euler"),
                                        (["--solver", "dpm++", "--eta", "0.3"], "--solver dpm++ is deterministic")])
def test_bad_solver_options_are_usage_errors(cli, tiny_model, ct_small, tmp_path, args, word):
    res = cli("edit", ct_small, "-p", "x", "-m", tiny_model, *args, "-o", tmp_path / "o", "-q")
    assert res.exit_code == 2 and word in res.stderr, res.output
    assert not (tmp_path / "o").exists()


def test_speed_quality_benchmark_counts_the_forwards_of_each_configuration(tiny_model, tmp_path, capsys):
    """Per edit: the inversion's steps, two rows per guided step, and the auto mask's 5 x 2; a
    configuration with its own model (a distilled student, guidance 1 by its defaults) one row a step."""
    import shutil

    import speed_quality  # benchmarks/ is on the tests' path (pyproject.toml)

    student = shutil.copytree(tiny_model, tmp_path / "student")
    with open(student / "cfgen.toml", "a") as f:
        f.write("\n[defaults]\nguidance = 1.0\n")
    rows = speed_quality.main(["--model", str(tiny_model), "--n", "1", "--configs", "ddim:3", "dpm++:2:negative-prompt",
                               f"ddim:3@{student}", "--device", "cpu"])
    assert [r["forwards"] for r in rows] == [3 + 2 * 3 + 10, 2 + 2 * 2 + 10, 3 + 3 + 10]
    assert rows[1]["config"] == {"solver": "dpm++", "steps": 2, "inversion": "negative-prompt", "model": None}
    assert rows[2]["config"]["model"] == str(student)
    assert all(r["n"] == 6 and r["ratio"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "fwd x" in out and str(student) in out
