"""Edit throughput: a plain editing loop against cfgen's batched edit path, in one run.

Builds Stable Diffusion v1.5-architecture components with random weights (the cost does not
depend on the values; `cfgen.models.build.PRESETS["sd15"]`), then times

  (a) the plain loop: fp32, one image at a time, classifier-free guidance as two UNet passes
      (50 inversion steps + 50 guided steps = 150 UNet forwards per edit at 50 steps);
  (b) cfgen's edit path (`cfgen.editing.core.edit_many`, what `cfgen edit --batch-size B` runs)
      in the given dtype at each batch size, with and without torch.compile;

  (c) `cfgen edit --batch` end to end on 16-bit PNG files of CheXpert size (2500x2048): reading,
      windowing, resizing and writing in the runner's worker threads, beside the model;

and prints edits/s, UNet image-forwards/s, achieved TFLOP/s (UNet FLOPs counted once with
torch.utils.flop_counter), the ratio (b)/(a), peak GPU memory, and the PSNR of the fast path's
output against the fp32 path's. Also the CPU latency of the shipped demo model's edit and the
time of `cfgen --help` (subprocesses, process start included).

    python benchmarks/edit_throughput.py --device cuda                       # the issue's bar (H100)
    python benchmarks/edit_throughput.py --preset tiny --device cpu --batch-sizes 1 2 --steps 4   # smoke
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def unet_flops(model, batch: int = 1) -> float:
    """FLOPs of one UNet forward on ``batch`` latents (torch.utils.flop_counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cfgen.editing.components import encode_prompts

    e = model.entry
    side = e.resolution // model.vae_scale_factor
    z = torch.zeros((batch, model.unet.config.in_channels) + (side,) * e.spatial_dims, device=model.device,
                    dtype=model.dtype)
    cond = encode_prompts(model, [""] * batch)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.unet(z, 500, encoder_hidden_states=cond)
    return float(fc.get_total_flops())


def _scans(n: int, res: int, channels: int):
    from cfgen.io.scan import Scan

    rng = np.random.default_rng(0)
    shape = (channels, res, res)
    return [Scan(path=Path(f"bench-{i}.png"), format="png", pixels=rng.uniform(0, 255, shape).astype(np.float32),
                 source_dtype="uint8") for i in range(n)]


def plain_loop(model, scan, steps: int, guidance: float) -> np.ndarray:
    """A hand-written fp32 edit: invert, then guided sampling with two UNet passes per step."""
    import torch

    from cfgen.editing import ddim
    from cfgen.editing.components import decode_latents, encode_images, encode_prompts
    from cfgen.editing.core import prepare
    from cfgen.editing.params import EditParams

    prep = prepare(model, scan, EditParams(window="0,255"))
    sched = ddim.make_scheduler(model.entry.scheduler, steps)
    src, tgt, neg = encode_prompts(model, ["a scan", "an edited scan", ""]).chunk(3)
    with torch.no_grad():
        z = ddim.invert(model.unet, sched, encode_images(model, prep.x), src, sched.timesteps)[-1]
        for t in sched.timesteps.tolist():
            out_u = model.unet(z, t, encoder_hidden_states=neg).sample
            out_c = model.unet(z, t, encoder_hidden_states=tgt).sample
            z = sched.step(out_u + guidance * (out_c - out_u), t, z).prev_sample
        return decode_latents(model, z).cpu().numpy()


def cfgen_path(model, scans, steps: int, guidance: float) -> list:
    from cfgen.editing import core
    from cfgen.editing.params import EditParams

    ps = [EditParams(prompt="an edited scan", source_prompt="a scan", steps=steps, guidance=guidance, window="0,255",
                     seed=i) for i in range(len(scans))]
    return core.edit_many(model, scans, ps)


def _timed(fn, device: str) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak ** 2 / mse)


def gpu_side(args) -> dict:
    import torch

    from cfgen.editing.speed import tune
    from cfgen.models.build import PRESETS, build_ldm2d
    from cfgen.models.loader import load_model

    res: dict = {"preset": args.preset, "steps": args.steps, "dtype": args.dtype, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_ldm2d(Path(tmp) / args.preset, PRESETS[args.preset], seed=0)
        fp32 = load_model(str(folder), device=args.device, dtype="float32")
        dev = fp32.device
        res["device"] = torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"
        flops = unet_flops(fp32)
        res["unet_tflop_per_forward"] = flops / 1e12
        forwards = 3 * args.steps  # inversion 1 + guided 2 per step
        scans = _scans(max(args.batch_sizes) * args.batches, fp32.entry.resolution, fp32.entry.channels)
        plain_loop(fp32, scans[0], 2, args.guidance)  # warm-up
        n_plain = args.plain_edits
        secs, _ = _timed(lambda: [plain_loop(fp32, s, args.steps, args.guidance) for s in scans[:n_plain]], dev)
        plain_rate = n_plain / secs
        res["plain"] = {"edits": n_plain, "seconds": secs, "edits_per_s": plain_rate,
                        "tflops": plain_rate * forwards * flops / 1e12}
        reference = cfgen_path(fp32, scans[:1], args.steps, args.guidance)[0].pixels
        fp32 = None  # free its memory before the fast path
        for compiled in ([False, True] if args.compile else [False]):
            fast = load_model(str(folder), device=args.device, dtype=args.dtype)
            if not compiled:  # what --batch-size auto would choose here (cfgen/editing/memory.py)
                from cfgen.editing import memory

                res["auto_plan"] = memory.plan(fast, 1024).record()
            tune(fast, compile_unet=compiled)
            for b in args.batch_sizes:
                if dev.startswith("cuda"):
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                cfgen_path(fast, scans[:b], 2, args.guidance)  # warm-up (and compilation)
                cfgen_path(fast, scans[:b], args.steps, args.guidance)
                n = b * args.batches
                secs, outs = _timed(lambda: [o for k in range(args.batches)
                                             for o in cfgen_path(fast, scans[k * b:(k + 1) * b], args.steps,
                                                                 args.guidance)], dev)
                rate = n / secs
                res["rows"].append({
                    "batch": b, "compiled": compiled, "edits": n, "seconds": secs, "edits_per_s": rate,
                    "forwards_per_s": rate * forwards, "tflops": rate * forwards * flops / 1e12,
                    "vs_plain": rate / plain_rate,
                    "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if dev.startswith("cuda") else None,
                    "psnr_vs_fp32": psnr(outs[0].pixels, reference)})
            if compiled != args.compile:
                fast = None
        if args.files:  # the last fast model is compiled as (c) needs: reused, not compiled twice
            res["files"] = files_side(args, folder, res["rows"], fast)
    return res


def files_side(args, folder: Path, rows: list[dict], model=None) -> dict:
    """(c) End to end on files, as `cfgen edit --batch jobs.csv` runs: ``args.files`` 16-bit PNGs
    of ``args.file_size`` (CheXpert-size by default) read, windowed and resized to the model's
    grid, edited, resized back and written (counterfactual, difference, panel, item.json). The
    host work runs in the runner's worker threads, overlapping the model's; (c) near (b) at the
    same batch size means it is hidden. Also the host seconds per item, measured alone."""
    import torch
    from PIL import Image

    from cfgen.editing import core
    from cfgen.editing.batch import RunSettings, run_edits
    from cfgen.editing.operations import OPERATIONS
    from cfgen.editing.params import EditParams
    from cfgen.editing.speed import tune
    from cfgen.io.scan import read_scan
    from cfgen.models.loader import load_model

    h, w = (int(v) for v in args.file_size.split("x"))
    b = max(args.batch_sizes)
    if model is None:
        model = load_model(str(folder), device=args.device, dtype=args.dtype)
        tune(model, compile_unet=args.compile)  # once here; the runs below must not compile again
    options = dict(prompt="an edited scan", source_prompt="a scan", steps=args.steps, guidance=args.guidance,
                   mask="none")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        rng = np.random.default_rng(1)
        ramp = np.linspace(0, 40000, w)[None, :] + np.linspace(0, 20000, h)[:, None]
        for i in range(args.files):
            px = (ramp + rng.normal(0, 2000, (h, w))).clip(0, 65535).astype(np.uint16)
            Image.fromarray(px).save(src / f"scan{i}.png")
        (src / "jobs.csv").write_text("image,seed\n" + "".join(f"scan{i}.png,{i}\n" for i in range(args.files)))
        (src / "warm.csv").write_text("image,seed\n" + "".join(f"scan{i}.png,{i}\n" for i in range(b)))

        def run(out: str, csv: str):  # what `cfgen edit --batch CSV --batch-size B` runs
            settings = RunSettings(out=Path(tmp) / out, model=model, device=args.device, batch_size=b)
            return run_edits(batch=src / csv, settings=settings, **options).report

        run("warm", "warm.csv")
        secs, rep = _timed(lambda: run("timed", "jobs.csv"), model.device)
        params = EditParams.resolve(model.entry.defaults, **options)
        scan = read_scan(src / "scan0.png")
        op = OPERATIONS["edit"]
        t0 = time.perf_counter()
        prep = core.prepare(model, scan, params)
        t1 = time.perf_counter()
        computed = op.compute(model, [scan], [params], None, [prep])[0]
        t2 = time.perf_counter()
        folder_alone = Path(tmp) / "alone"
        folder_alone.mkdir()
        op.write(folder_alone, scan, op.finish(model, scan, computed), params, None)
        t3 = time.perf_counter()
    ok = sum(i["status"] == "ok" for i in rep.data["items"])
    model_only = [r["edits_per_s"] for r in rows if r["batch"] == b and r["compiled"] == args.compile]
    if str(model.device).startswith("cuda"):
        torch.cuda.empty_cache()
    return {"files": args.files, "file_size": [h, w], "batch": b, "compiled": args.compile, "ok": ok,
            "seconds": secs, "edits_per_s": ok / secs, "model_only_edits_per_s": model_only[0] if model_only else None,
            "host_prepare_s": t1 - t0, "host_finish_write_s": t3 - t2}


def cpu_side() -> dict:
    """Demo edit latency and `cfgen --help` time, in subprocesses as a user runs them."""
    out: dict = {}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cfgen.cli.main", "--help"], capture_output=True, check=True)
    out["help_s"] = time.perf_counter() - t0
    example = ROOT / "examples" / "cxr_demo.png"
    if example.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "cfgen.cli.main", "edit", str(example), "-s",
                                   "Chest X-ray showing Pleural Effusion, Support Devices", "-p",
                                   "Chest X-ray showing Pleural Effusion", "--device", "cpu", "-o", tmp, "-q"],
                                  capture_output=True, text=True)
            out["demo_edit_s"] = time.perf_counter() - t0 if proc.returncode == 0 else None
    return out


def print_result(res: dict) -> None:
    g = res["gpu"]
    print(f"{g['device']}, preset {g['preset']}, {g['steps']}+{g['steps']} steps, UNet "
          f"{g['unet_tflop_per_forward'] * 1e3:.1f} GFLOP/forward, fast path dtype {g['dtype']}")
    p = g["plain"]
    print(f"(a) plain fp32 loop, batch 1, guidance as two passes: {p['edits_per_s']:.3f} edits/s "
          f"({p['tflops']:.1f} TFLOP/s)")
    print(f"{'batch':>6}{'compile':>9}{'edits/s':>10}{'fwd/s':>9}{'TFLOP/s':>9}{'x plain':>9}{'peak GiB':>10}{'PSNR':>8}")
    for r in g["rows"]:
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        print(f"{r['batch']:>6}{str(r['compiled']):>9}{r['edits_per_s']:>10.3f}{r['forwards_per_s']:>9.1f}"
              f"{r['tflops']:>9.1f}{r['vs_plain']:>9.1f}{mem:>10}{r['psnr_vs_fp32']:>8.1f}")
    a = g.get("auto_plan")
    if a:
        print(f"--batch-size auto would choose {a['batch_size']} (free {a['free_mb']:.0f} MiB, "
              f"UNet {a['unet_item_mb'] or 0:.0f} / VAE {a['vae_item_mb'] or 0:.0f} MiB per item by {a['measured_by']}; "
              f"VAE chunk {a['vae_chunk']}, tiling {a['vae_tiling']})")
    f = g.get("files")
    if f:
        rel = f" ({f['edits_per_s'] / f['model_only_edits_per_s']:.0%} of (b) at that batch)" \
            if f["model_only_edits_per_s"] else ""
        print(f"(c) end to end on {f['files']} {f['file_size'][0]}x{f['file_size'][1]} 16-bit PNG files, batch "
              f"{f['batch']}, compile {f['compiled']}: {f['edits_per_s']:.3f} edits/s{rel}; host work per item "
              f"alone: prepare {f['host_prepare_s']:.3f} s, finish + write {f['host_finish_write_s']:.3f} s")
    c = res["cpu"]
    print(f"CPU: cfgen --help {c['help_s']:.2f} s; demo edit {c.get('demo_edit_s') or float('nan'):.1f} s "
          "(process start included)")
    print("bars (H100, sd15, 50+50): >= 3.5 edits/s, >= 20x plain, PSNR >= 35 dB; --help < 0.5 s")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="sd15", help="architecture (cfgen.models.build.PRESETS)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float16", help="the fast path's weights: float16 | bfloat16 | float32")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32])
    ap.add_argument("--batches", type=int, default=2, help="timed batches per batch size")
    ap.add_argument("--plain-edits", type=int, default=2, help="edits timed in the plain loop")
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile'd UNet")
    ap.add_argument("--files", type=int, default=64, help="(c): files edited end to end (0: skip)")
    ap.add_argument("--file-size", default="2500x2048", help="(c): HxW of those files")
    ap.add_argument("--no-cpu-side", action="store_true", help="skip the demo edit and --help timings")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    res = {"gpu": gpu_side(args), "cpu": {} if args.no_cpu_side else cpu_side()}
    if not res["cpu"]:
        res["cpu"] = {"help_s": float("nan")}
    print_result(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
