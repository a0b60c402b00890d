"""`cfgen distill`: latent consistency distillation into a few-step student that edits through the
same loop."""
from __future__ import annotations

import json
import tomllib

import pytest
import torch

from cfgen.errors import UsageError
from cfgen.training.distill import ConsistencyDistillation, boundary_scalings, consistency


def _ddpm(config: dict):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config({k: v for k, v in config.items() if k not in ("set_alpha_to_one", "steps_offset", "kind")})


def test_the_consistency_function_is_the_identity_at_zero_and_the_x0_estimate_elsewhere():
    from cfgen.models.registry import DEFAULT_SCHEDULER

    sched = _ddpm(DEFAULT_SCHEDULER)
    gen = torch.Generator().manual_seed(0)
    z, out = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t0 = torch.zeros(3, dtype=torch.long)
    assert torch.allclose(consistency(sched, z, out, t0), z, atol=1e-6)  # the boundary condition f(z, 0) = z
    t = torch.tensor([1, 21, 981])
    a = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x0 = (z - (1 - a).sqrt() * out) / a.sqrt()  # DDIM's x0 estimate, written out
    c_skip, c_out = boundary_scalings(t)
    assert float(c_skip.max()) < 3e-3 and float(c_out.min()) > 0.99
    assert torch.allclose(consistency(sched, z, out, t), c_skip.reshape(-1, 1, 1, 1) * z + c_out.reshape(-1, 1, 1, 1) * x0)


def test_the_teachers_solver_step_is_diffusers_guided_ddim_step(tiny_model):
    """The target's ODE step, against diffusers' DDIMScheduler.step on the same grid and guidance."""
    from diffusers import DDIMScheduler

    from cfgen.editing.ddim import predict
    from cfgen.models.loader import load_model
    from cfgen.training.config import FinetuneConfig

    m = load_model(str(tiny_model), device="cpu")
    obj = ConsistencyDistillation(guidance=5.0, teacher_steps=10)
    obj.check(m, FinetuneConfig())
    ref = DDIMScheduler.from_config({k: v for k, v in m.entry.scheduler.items() if k != "kind"})
    ref.set_timesteps(10)
    gen = torch.Generator().manual_seed(1)
    ts = [int(ref.timesteps[0]), int(ref.timesteps[4]), int(ref.timesteps[-1])]  # the last goes to the clean end
    z = torch.randn(3, m.unet.config.in_channels, 8, 8, generator=gen)
    cond, uncond = torch.randn(3, 2, 16, generator=gen), torch.zeros(3, 2, 16)
    t = torch.tensor(ts)
    with torch.no_grad():
        got = obj._teacher_step(_ddpm(m.entry.scheduler), z, t, t - 100, cond, uncond)
        for i, ti in enumerate(ts):
            out = predict(m.unet, z[i:i + 1], ti, cond[i:i + 1], uncond[i:i + 1], 5.0)
            want = ref.step(out, ti, z[i:i + 1]).prev_sample
            assert torch.allclose(got[i:i + 1], want, atol=1e-4), (ti, float((got[i:i + 1] - want).abs().max()))


class _Consistent(torch.nn.Module):
    """Predicts the noise that points every z_t at one fixed z0 whatever the condition: a model
    whose one-step estimate is the same from every level, so its consistency loss vanishes."""

    def __init__(self, sched, z0):
        super().__init__()
        self.sched, self.z0 = sched, z0

    def forward(self, z, t, encoder_hidden_states=None):
        a = self.sched.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
        z0 = self.z0.repeat(z.shape[0] // self.z0.shape[0], 1, 1, 1)
        return type("Out", (), {"sample": (z - a.sqrt() * z0) / (1 - a).sqrt()})()


def test_the_loss_vanishes_for_a_self_consistent_model_and_not_for_a_real_one(tiny_model, monkeypatch):
    from cfgen.models.loader import load_model
    from cfgen.training.config import FinetuneConfig

    m = load_model(str(tiny_model), device="cpu")
    sched = _ddpm(m.entry.scheduler)
    gen = torch.Generator().manual_seed(2)
    pixels = torch.rand(4, 1, 32, 32, generator=gen) * 2 - 1
    from cfgen.editing.components import encode_images

    z0 = encode_images(m, pixels).float()
    monkeypatch.setattr("cfgen.editing.components.encode_images", lambda model, x: z0)
    obj = ConsistencyDistillation(teacher_steps=10)
    obj.check(m, FinetuneConfig())
    real = float(obj(m, m.unet, sched, pixels, ["a"] * 4, torch.Generator().manual_seed(0), FinetuneConfig()))
    oracle = _Consistent(sched, z0)
    obj.teacher = oracle
    # the sampler's last step lands at alphas_cumprod[0] (SD's set_alpha_to_one = False), not at z0: a
    # residual 0.029 * noise that no model removes; the self-consistent model is exact against the clean end
    obj.grid.final_alpha_cumprod = torch.tensor(1.0)
    perfect = float(obj(m, oracle, sched, pixels, ["a"] * 4, torch.Generator().manual_seed(0), FinetuneConfig()))
    # a student that points at another z0 than its teacher is self-consistent everywhere but at the
    # clean end, where the target is the teacher's own step: off by 0.5 for the samples drawn there
    off = float(obj(m, _Consistent(sched, z0 + 0.5), sched, pixels, ["a"] * 4, torch.Generator().manual_seed(0),
                    FinetuneConfig()))
    drawn = torch.randint(10, (4,), generator=torch.Generator().manual_seed(0))  # the loss's first draw: grid indices
    at_end = int((drawn == 9).sum())
    assert at_end > 0
    assert perfect < 5e-4 < real and off == pytest.approx(0.499 * at_end / 4, abs=2e-3), (perfect, real, off)


def test_options_are_checked_before_training(tiny_model):
    from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d
    from cfgen.models.loader import load_model
    from cfgen.training.config import FinetuneConfig

    for kwargs, msg in [({"guidance": 0.5}, "at least 1"), ({"teacher_steps": 1}, "2..1000"),
                        ({"student_steps": 60}, "within 1"), ({"huber_c": 0}, "positive")]:
        with pytest.raises(UsageError, match=msg):
            ConsistencyDistillation(**kwargs)
    m = load_model(str(tiny_model), device="cpu")
    with pytest.raises(UsageError, match="--snr-gamma"):
        ConsistencyDistillation().check(m, FinetuneConfig(snr_gamma=5.0))
    obj = ConsistencyDistillation()
    obj.check(m, FinetuneConfig())
    assert obj.guidance == float(m.entry.defaults.get("guidance", 7.5))  # the teacher's own guidance


def test_distill_trains_a_student_that_edits_with_its_few_steps_and_resumes(cli, tiny_model, tmp_path):
    data = tmp_path / "cxr"
    assert cli("phantoms", "cxr", "-n", "4", "--size", "32", "--no-counterfactuals", "-o", data, "-q").exit_code == 0
    assert cli("caption", data / "labels.csv", "-o", data / "train.csv").exit_code == 0
    out = tmp_path / "student"
    common = ("distill", data / "train.csv", "-m", tiny_model, "-o", out, "--batch-size", "2", "--learning-rate", "1e-4",
              "--checkpoint-every", "1", "--device", "cpu", "-q", "--teacher-steps", "20", "--student-steps", "3")
    res = cli(*common, "--max-steps", "1", "--distill-guidance", "4")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["command"] == "distill"
    assert report["params"]["objective"]["guidance"] == 4.0 and report["params"]["objective"]["teacher_steps"] == 20
    res = cli(*common, "--max-steps", "2", "--distill-guidance", "4", "--resume")
    assert res.exit_code == 0, res.output
    tr = json.loads((out / "report.json").read_text())["training"]
    assert tr["start_step"] == 1 and tr["final_step"] == 2
    defaults = tomllib.loads((out / "model" / "cfgen.toml").read_text())["defaults"]
    assert defaults["steps"] == 3 and defaults["guidance"] == 1.0
    scan = sorted((data / "images").glob("*.png"))[0]
    edited = tmp_path / "edit"
    res = cli("edit", scan, "-p", "Chest X-ray showing Cardiomegaly", "-m", out / "model", "-o", edited, "--mask", "none",
              "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    item = json.loads((edited / "report.json").read_text())["items"][0]
    assert item["status"] == "ok"
    params = json.loads((edited / "report.json").read_text())["params"]
    assert params["steps"] == 3 and params["guidance"] == 1.0


def test_distill_options_belong_to_distill_and_cycle_rules_do_not(cli, tiny_model, tmp_path):
    from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d

    csv = tmp_path / "d.csv"
    csv.write_text("image,caption\nx.png,a\n")
    res = cli("finetune", csv, "-m", tiny_model, "-o", tmp_path / "o", "--student-steps", "4")
    assert res.exit_code == 2 and "--student-steps: an option of cfgen distill" in res.output
    res = cli("distill", csv, "-m", tiny_model, "-o", tmp_path / "o", "--counterfactual", "a=>b")
    assert res.exit_code == 2 and "cycle training, not distillation" in res.output
    flow = build_ldm3d(tmp_path / "flow", LDM3DSpec(scheduler="rflow"), seed=0)
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), np.eye(4)), tmp_path / "x.nii.gz")
    vol = tmp_path / "v.csv"
    vol.write_text("image,caption\nx.nii.gz,a\n")
    res = cli("distill", vol, "-m", flow, "-o", tmp_path / "o2", "--device", "cpu")
    assert res.exit_code != 0 and "rectified-flow model" in res.output
