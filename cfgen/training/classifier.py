"""Training the scoring classifier (family ``classifier``) on a labelled image CSV.

The CSV has ``image`` (or ``Path``) and one column per label: binary labels read 1/1.0 as
positive and blank/0/-1 as negative (CheXpert style); regression labels must be numbers.
Images are held in memory at the network's size; augmentation (shifts, exposure, noise) keeps
the network from keying on one rendering. Held-out accuracy/AUC/MAE go into config.json.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from cfgen.errors import InputError
from cfgen.io.tables import image_column, read_csv


def read_labelled(csv_path: Path, labels: list[str], kinds: list[str], prepare) -> tuple["object", "object"]:
    """(images (N, C, S, S) in [0, 1], targets (N, L)) from a labels CSV."""
    import torch

    from cfgen.io.intensity import choose_window
    from cfgen.io.scan import read_scan

    columns, rows = read_csv(csv_path)
    image_col = image_column(columns)
    missing = [c for c in labels if c not in columns]
    if image_col is None or missing:
        raise InputError(f"{csv_path}: needs an 'image' (or 'Path') column and {', '.join(labels)} "
                         f"(missing {', '.join(missing) or 'image'}); columns found: {', '.join(columns)}")
    images, targets = [], []
    for line, row in enumerate(rows, start=2):
        scan = read_scan(csv_path.parent / row[image_col])
        w = choose_window(scan.pixels, scan.source_dtype, "auto", (0.0, 1.0), where=str(scan.path))
        images.append(prepare(torch.from_numpy(w.to_model(scan.pixels)[None])))
        t = []
        for lab, kind in zip(labels, kinds):
            cell = (row.get(lab) or "").strip()
            try:
                v = float(cell) if cell else (0.0 if kind == "binary" else math.nan)
            except ValueError:
                raise InputError(f"{csv_path} line {line}: {lab} '{cell}' is not a number") from None
            if kind == "binary":
                v = 1.0 if v == 1.0 else 0.0
            elif not math.isfinite(v):
                raise InputError(f"{csv_path} line {line}: {lab} is empty")
            t.append(v)
        targets.append(t)
    if not images:
        raise InputError(f"{csv_path}: no rows")
    return torch.cat(images), torch.tensor(targets, dtype=torch.float32)


def augment(x, gen):
    """Random shifts up to 1/32 of the size, blur (half the batches), exposure (gain, offset,
    gamma) and noise: generated images are smoother and differently exposed than renderings."""
    import torch
    import torch.nn.functional as F

    b, s = x.shape[0], x.shape[-1]
    m = max(1, s // 32)
    dx, dy = (int(v) for v in torch.randint(-m, m + 1, (2,), generator=gen))
    x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    if float(torch.rand(1, generator=gen)) < 0.5:
        x = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    gain = 1 + 0.15 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 2
    off = 0.05 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 2
    gamma = torch.exp(0.2 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 2)
    x = (x.clamp(0, 1) ** gamma) * gain + off
    return (x + 0.02 * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def auc(scores: np.ndarray, y: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged)."""
    from scipy.stats import rankdata

    pos, neg = int(y.sum()), int((1 - y).sum())
    if pos == 0 or neg == 0:
        return None
    r = rankdata(scores)
    return float((r[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def heldout_metrics(clf, images, targets) -> dict:
    import torch

    outs = []
    for i in range(0, len(images), 64):
        o, _ = clf.predict(images[i:i + 64])
        outs.append(torch.stack([o[k] for k in clf.labels], dim=1))
    pred = torch.cat(outs).numpy()
    y = targets.numpy()
    res = {"n": int(len(y))}
    for j, (lab, kind) in enumerate(zip(clf.labels, clf.config["kinds"])):
        if kind == "binary":
            res[lab] = {"accuracy": float(((pred[:, j] >= 0.5) == (y[:, j] >= 0.5)).mean()),
                        "auc": auc(pred[:, j], y[:, j]), "prevalence": float(y[:, j].mean())}
        else:
            res[lab] = {"mae": float(np.abs(pred[:, j] - y[:, j]).mean())}
    return res


def train_classifier(train_csv: Path, out: Path, labels: list[str], kinds: list[str] | None = None,
                     heldout_csv: Path | None = None, image_size: int = 128, steps: int = 2000,
                     batch_size: int = 32, lr: float = 1e-3, seed: int = 0, device: str = "cpu",
                     init_features: int = 32, growth_rate: int = 16, block_config=(2, 3, 4, 3),
                     on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train, evaluate on ``heldout_csv`` and save to ``out``; returns the config written."""
    import torch

    from cfgen.models.classifier import Classifier, build_network, check_config, save_classifier

    kinds = kinds or ["binary"] * len(labels)
    cfg = check_config({"labels": list(labels), "kinds": list(kinds), "spatial_dims": 2, "in_channels": 1,
                        "image_size": image_size, "init_features": init_features, "growth_rate": growth_rate,
                        "block_config": list(block_config)}, out / "config.json")
    torch.manual_seed(seed)
    net = build_network(cfg).to(device)
    clf = Classifier(net=net, config=cfg, device=device)
    t0 = time.perf_counter()
    images, targets = read_labelled(Path(train_csv), labels, kinds, clf.prepare)
    binary = torch.tensor([k == "binary" for k in kinds], device=device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        x = augment(images[idx], gen).to(device)
        y = targets[idx].to(device)
        logits = net(x)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        mse = (logits - y) ** 2
        loss = torch.where(binary, bce, mse).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step:
            on_step(step, float(loss.detach()))
    net.eval()
    cfg["training"] = {"csv": Path(train_csv).name, "n": int(len(images)), "steps": steps, "batch_size": batch_size,
                       "lr": lr, "seed": seed, "seconds": round(time.perf_counter() - t0, 1)}
    if heldout_csv is not None:
        hx, hy = read_labelled(Path(heldout_csv), labels, kinds, clf.prepare)
        cfg["evaluation"] = {"heldout_csv": Path(heldout_csv).name, **heldout_metrics(clf, hx, hy)}
    save_classifier(out, net, cfg)
    return cfg
