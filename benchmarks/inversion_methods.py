"""Reconstruction per inversion method on held-out chest phantoms (issue 22 item 1).

Each phantom (seeds never used in training) is inverted under its factual caption and
regenerated under the same caption at the edit's guidance (the model's default unless
--guidance), as `cfgen invert --guidance G --inversion M` does. Printed per method:

  inv_psnr   PSNR of the reconstruction against the first stage's own reconstruction (the
             inversion's part alone; for wavelet/pixel models the scan itself), mean and min
  psnr       PSNR against the phantom (VAE included)
  unet       UNet evaluations per image (batch items counted, guidance branches included)
  s/image    wall time per image

    python benchmarks/inversion_methods.py --model demo-cxr --n 4 --seed 91000 --steps 20
Run it alone (two torch processes on two cores halve each other's speed).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

METHODS = ("ddim", "negative-prompt", "null-text")


def _scans(n: int, seed: int, size: int):
    """Subjects 0..n-1 of ``seed``: the factual phantom and its caption."""
    from cfgen.io.scan import Scan
    from cfgen.phantoms import cxr
    from cfgen.phantoms.dataset import caption_of

    out = []
    for i in range(n):
        exo, attrs = cxr.subject(seed, i)
        fact = cxr.render(exo, attrs, size)
        scan = Scan(path=Path(f"phantom-{i}.png"), format="png", pixels=np.round(fact * 255)[None].astype(np.float32),
                    source_dtype="uint8")
        out.append((scan, caption_of(exo, attrs)))
    return out


def run(model_name: str | None, n: int, seed: int, steps: int, guidance: float | None, null_text_steps: int,
        methods: tuple[str, ...] = METHODS, device: str = "auto", solver: str = "ddim") -> dict:
    from cfgen.editing import core
    from cfgen.editing.params import EditParams
    from cfgen.models.loader import load_model

    model = load_model(model_name, device=device)
    calls = [0]
    model.unet.register_forward_hook(lambda _m, args, _out: calls.__setitem__(0, calls[0] + int(args[0].shape[0])))
    scans = _scans(n, seed, model.entry.resolution)
    warm = EditParams.resolve(model.entry.defaults, "invert", source_prompt=scans[0][1], steps=2)
    core.invert(model, scans[0][0], warm)  # first-call costs out of the timings
    table = {}
    for method in methods:
        inv, full, secs, calls[0] = [], [], 0.0, 0
        for scan, caption in scans:
            p = EditParams.resolve(model.entry.defaults, "invert", source_prompt=caption, steps=steps,
                                   guidance=guidance or model.entry.defaults.get("guidance", 7.5), inversion=method,
                                   null_text_steps=null_text_steps, solver=solver)
            t0 = time.perf_counter()
            m = core.invert(model, scan, p).metrics
            secs += time.perf_counter() - t0
            inv.append(m["inversion_psnr"] if m["inversion_psnr"] is not None else 100.0)
            full.append(m["psnr"] if m["psnr"] is not None else 100.0)
        table[method] = {"inv_psnr_mean": float(np.mean(inv)), "inv_psnr_min": float(np.min(inv)),
                         "psnr_mean": float(np.mean(full)), "unet_per_image": calls[0] / len(scans),
                         "s_per_image": secs / len(scans), "guidance": p.guidance}
    return {"model": model.entry.name, "n": len(scans), "seed": seed, "steps": steps, "solver": solver,
            "null_text_steps": null_text_steps, "methods": table}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo-cxr")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--seed", type=int, default=91000, help="held-out phantom seeds start here")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=None, help="[default: the model's edit guidance]")
    ap.add_argument("--null-text-steps", type=int, default=10)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--solver", default="ddim", choices=("ddim", "dpm++"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()
    res = run(a.model, a.n, a.seed, a.steps, a.guidance, a.null_text_steps, tuple(a.methods), a.device, a.solver)
    print(f"{res['model']}: n={res['n']} phantoms from seed {res['seed']}, {res['steps']} {res['solver']} steps, "
          f"null-text {res['null_text_steps']} inner steps")
    print(f"{'method':<16}{'guidance':>9}{'inv_psnr':>10}{'(min)':>8}{'psnr':>8}{'unet':>8}{'s/image':>9}")
    for m, r in res["methods"].items():
        print(f"{m:<16}{r['guidance']:>9.3g}{r['inv_psnr_mean']:>10.2f}{r['inv_psnr_min']:>8.2f}{r['psnr_mean']:>8.2f}"
              f"{r['unet_per_image']:>8.0f}{r['s_per_image']:>9.1f}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
