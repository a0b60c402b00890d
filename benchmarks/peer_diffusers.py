"""One CPU edit as a process: `cfgen edit` against a plain diffusers loop over the same folder
(issue 22 item 5).

The peer is the textbook loop with diffusers' own classes: DDIMInverseScheduler (guidance 1)
then DDIMScheduler with classifier-free guidance, the folder's VAE, text encoder and tokenizer,
an 8-bit PNG written with PIL. cfgen runs `cfgen edit --mask none` with the same steps and
guidance, with its figures and with `--figure-format none`. All start as fresh processes (imports and model loading included), alternating,
and the medians and their ratio are printed (cfgen / peer; <= 1 means cfgen is no slower),
with each side's own breakdown (imports, load, compute, write) from its last run.

    python benchmarks/peer_diffusers.py --model demo-cxr --runs 5 --steps 50 --guidance 7.5
Run it alone: two torch processes on two cores halve each other's speed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE, TARGET = "Chest X-ray showing Pleural Effusion", "Chest X-ray showing No Finding"


def peer(folder: Path, image: Path, out: Path, steps: int, guidance: float) -> None:
    """The plain diffusers loop; prints its own timings as one JSON line."""
    t0 = time.perf_counter()
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, DDIMInverseScheduler, DDIMScheduler, UNet2DConditionModel
    from PIL import Image
    from transformers import AutoTokenizer, CLIPTextModel

    t1 = time.perf_counter()
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    inverse = DDIMInverseScheduler.from_pretrained(folder, subfolder="scheduler")
    sampler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    t2 = time.perf_counter()
    with torch.no_grad():
        ids = tok([SOURCE, TARGET, ""], padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        src, tgt, neg = text_encoder(ids)[0].chunk(3)
        side = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)  # the model's resolution
        img = Image.open(image).convert("L").resize((side, side), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1)[None, None]
        x = x.repeat(1, vae.config.in_channels, 1, 1)
        inverse.set_timesteps(steps)
        sampler.set_timesteps(steps)
        z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        for t in inverse.timesteps:
            z = inverse.step(unet(z, t, encoder_hidden_states=src).sample, t, z).prev_sample
        for t in sampler.timesteps:
            out_u, out_c = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([neg, tgt])).sample.chunk(2)
            z = sampler.step(out_u + guidance * (out_c - out_u), t, z).prev_sample
        y = vae.decode(z / vae.config.scaling_factor).sample[0].mean(0).numpy()
    t3 = time.perf_counter()
    Image.fromarray(np.round((np.clip(y, -1, 1) + 1) * 127.5).astype(np.uint8)).save(out)
    t4 = time.perf_counter()
    print(json.dumps({"imports_s": t1 - t0, "load_s": t2 - t1, "compute_s": t3 - t2, "write_s": t4 - t3}))


def _timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    secs = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    return secs, res.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo-cxr")
    ap.add_argument("--image", type=Path, default=Path(__file__).resolve().parents[1] / "examples" / "cxr_demo.png")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--peer", nargs=2, type=Path, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peer:
        return peer(a.peer[0], a.image, a.peer[1], a.steps, a.guidance)
    from cfgen.models.loader import entry_for, locate

    folder = locate(entry_for(a.model))[0]
    cfgen_bin = [sys.executable, "-m", "cfgen"]
    env = dict(os.environ)
    times: dict[str, list[float]] = {"cfgen": [], "cfgen_nofig": [], "peer": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.runs):
            for key, extra in (("cfgen", []), ("cfgen_nofig", ["--figure-format", "none"])):
                secs, _ = _timed([*cfgen_bin, "edit", str(a.image), "-m", a.model, "-s", SOURCE, "-p", TARGET,
                                  "--steps", str(a.steps), "--guidance", str(a.guidance), "--mask", "none",
                                  "--device", "cpu", "-o", f"{tmp}/{key}", "-q", "--overwrite", *extra], env)
                times[key].append(secs)
            secs, out = _timed([sys.executable, __file__, "--peer", str(folder), f"{tmp}/peer.png", "--image",
                                str(a.image), "--steps", str(a.steps), "--guidance", str(a.guidance)], env)
            times["peer"].append(secs)
        report = json.loads(Path(f"{tmp}/cfgen/report.json").read_text())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{a.model}, {a.steps}+{a.steps} steps, guidance {a.guidance}, {a.runs} alternating runs, "
          f"{os.cpu_count()} CPU threads visible")
    for k, v in times.items():
        print(f"  {k:<12} median {med[k]:6.2f} s  runs {', '.join(f'{x:.2f}' for x in v)}")
    print(f"  ratio cfgen / peer: {med['cfgen'] / med['peer']:.3f} (with its panel and difference figures); "
          f"{med['cfgen_nofig'] / med['peer']:.3f} with --figure-format none (the peer writes one PNG)")
    low = {k: min(v) for k, v in times.items()}  # the least disturbed run of each: less noise than medians
    print(f"  ratio of the fastest runs: {low['cfgen'] / low['peer']:.3f}; {low['cfgen_nofig'] / low['peer']:.3f} "
          "with --figure-format none")
    it = report["items"][0]
    print(f"  cfgen's last run: model_load_s {report['timings']['model_load_s']}, total_s "
          f"{report['timings']['total_s']}, item {json.dumps(it.get('timings'))}")
    print(f"  peer's last run: {out.strip()}")


if __name__ == "__main__":
    main()
