"""Bookkeeping cost per item of `cfgen edit --batch`, from 100 to 100,000 rows (issue 20 item 1).

Every row is an item finished in an earlier run (its folder holds item.json and its outputs),
so no model work is done: what is left is reading the CSV, the resume check, the journal line,
report.json progress writes and the final summary. The first row is computed once with a tiny
model; the other rows get copies of its item record (outputs hard-linked into their folders).

    python benchmarks/batch_overhead.py --rows 100 1000 10000 100000

Target: per-item overhead under 5 ms and the 100,000-row figure within 1.5x of the 1,000-row one.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def _setup(root: Path, rows: int, model: Path) -> tuple[Path, Path]:
    from PIL import Image
    import numpy as np

    from cfgen.editing.batch import RunSettings, run_edits

    img = root / "scan.png"
    Image.fromarray((np.random.default_rng(0).uniform(0, 255, (32, 32))).astype(np.uint8)).save(img)
    csv = root / "jobs.csv"
    names = [f"r{i:06d}" for i in range(rows)]
    csv.write_text("image,prompt,output\n" + "".join(f"scan.png,Chest X-ray showing Cardiomegaly,{n}\n" for n in names))
    out = root / "out"
    first = root / "first.csv"
    first.write_text("image,prompt,output\n" + f"scan.png,Chest X-ray showing Cardiomegaly,{names[0]}\n")
    run_edits(settings=RunSettings(out=out, model=str(model), workers=2), batch=first, steps=2, mask="none")
    shutil.rmtree(out / ".journal")
    rec = json.loads((out / names[0] / "item.json").read_text())
    sources = {k: out / p for k, p in rec["outputs"].items()}
    plain = {k: p.name for k, p in sources.items()}
    for i, name in enumerate(names[1:], start=2):
        folder = out / name
        folder.mkdir()
        if i % 50000 == 0:  # a file takes at most 65000 hard links (ext4): link to a fresh copy
            sources = {k: Path(shutil.copy2(src, root / f"src{i}-{plain[k]}")) for k, src in sources.items()}
        for k, src in sources.items():
            os.link(src, folder / plain[k])
        outputs = {k: f"{name}/{plain[k]}" for k in sources}
        (folder / "item.json").write_text(json.dumps({**rec, "name": name, "row": i, "outputs": outputs}))
    (out / "report.json").unlink()
    return csv, out


def measure(rows: int, model: Path) -> dict:
    from cfgen.editing.batch import RunSettings, run_edits

    root = Path(tempfile.mkdtemp(prefix="cfgen-overhead-"))
    try:
        csv, out = _setup(root, rows, model)
        t0 = time.perf_counter()
        res = run_edits(settings=RunSettings(out=out, model=str(model), workers=2), batch=csv, steps=2, mask="none")
        wall = time.perf_counter() - t0
        data = res.report.data
        skipped = data["summary"]["skipped"]
        assert skipped == rows and len(data["items"]) == rows, (skipped, rows)
        load = data["timings"]["model_load_s"]
        return {"rows": rows, "wall_s": round(wall, 2), "model_load_s": load,
                "per_item_ms": round(1000 * (wall - load) / rows, 3)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100, 1000, 10000, 100000])
    args = ap.parse_args(argv)
    from cfgen.models.build import PRESETS, build_ldm2d

    with tempfile.TemporaryDirectory() as tmp:
        model = build_ldm2d(Path(tmp) / "tiny", PRESETS["tiny"], seed=0)
        results = [measure(n, model) for n in args.rows]
    base = next((r for r in results if r["rows"] == 1000), results[0])
    print(f"{'rows':>8} {'wall s':>8} {'per item ms':>12} {'vs ' + str(base['rows']):>8}")
    for r in results:
        print(f"{r['rows']:>8} {r['wall_s']:>8.2f} {r['per_item_ms']:>12.3f} {r['per_item_ms'] / base['per_item_ms']:>8.2f}")
    return results


if __name__ == "__main__":
    main()
