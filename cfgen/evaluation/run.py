"""``cfgen evaluate``: score pairs, write report.json and figures.

Per item: identity (l1, psnr, ssim, ms_ssim), ground truth when a true counterfactual is
known (see ``pairwise``), classifier outputs for the edited label (``cpg`` = |p(x') - p(x)|,
PRISM's counterfactual prediction gain; ``flip`` = 1 when the classifier calls x' the target
class; for regression labels ``attribute_error`` = |f(x') - target|), and CLIP scores when a
CLIP model is given. Per set: FID and MMD of the counterfactuals' classifier features against
the originals' (and the true counterfactuals'), diversity of counterfactuals and originals.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cfgen.errors import CfgenError, UsageError
from cfgen.evaluation.pairs import Pair, read_pair
from cfgen.evaluation.pairwise import floor_metrics, identity_metrics, mask_metrics, true_region, truth_metrics
from cfgen.report import RunReport

#: metrics where smaller is better (the rest: larger is better)
LOWER_IS_BETTER = {"l1", "gt_l1", "gt_l1_nothing", "gt_error_ratio", "change_outside", "attribute_error",
                   "gt_floor_l1", "gt_floor_ratio", "gt_sample_floor_l1", "gt_sample_floor_ratio"}
MAX_DIVERSITY_IMAGES = 64
#: every per-item metric evaluate can write
ITEM_METRICS = ("l1", "psnr", "psnr_capped", "ssim", "ms_ssim", "gt_l1", "gt_l1_nothing", "gt_error_ratio",
                "gt_achieved", "change_inside", "change_outside", "region_fraction", "cpg", "flip", "p_before",
                "p_after", "attribute_change", "attribute_error", "clip_image_text", "clip_image_image",
                "clip_direction", "mask_recall", "mask_precision", "mask_fraction", "gt_floor_l1", "gt_floor_ratio",
                "gt_sample_floor_l1", "gt_sample_floor_ratio",
                *(f"{m}{s}" for m in ("effusion_ml", "laa950_pct", "ctr") for s in ("", "_after", "_change")))


@dataclass
class EvalOptions:
    rank_by: str | None = None  # default: gt_error_ratio when there is ground truth, else l1
    clip_threshold: float = 0.1
    seed: int = 0
    figures: bool = True
    figure_format: str = "png"  # png, svg, pdf or none
    ct_labels: dict | None = None  # CT measures' label ids (cfgen.evaluation.ct.parse_labels; None: the default)


@dataclass
class _Sets:
    feats: dict[str, list] = field(default_factory=lambda: {"original": [], "counterfactual": [], "truth": []})
    images: dict[str, list] = field(default_factory=lambda: {"original": [], "counterfactual": []})


def infer_label(pair: Pair, labels: list[str]) -> tuple[str | None, float | None, str]:
    """The edited label: given, or the one label named in exactly one of the two prompts."""
    if pair.label:
        return pair.label, pair.target, "given"
    from cfgen.models.classifier import label_from_prompts

    label, target = label_from_prompts(pair.source_prompt, pair.prompt, labels)
    return (label, target, "from prompts") if label is not None else (None, None, "unknown")


def classifier_metrics(clf, x, xcf, pair: Pair) -> tuple[dict, dict, Any, Any]:
    import torch

    out, feats = clf.predict(torch.cat([x, xcf]))
    preds = {k: [float(v[0]), float(v[1])] for k, v in out.items()}
    label, target, how = infer_label(pair, clf.labels)
    info = {"label": label, "target": target, "label_from": how,
            "predictions": {"original": {k: v[0] for k, v in preds.items()},
                            "counterfactual": {k: v[1] for k, v in preds.items()}}}
    m: dict[str, float] = {}
    if label is not None and label not in clf.labels:
        info["label_from"] = f"'{label}' is not a classifier output"
    elif label is not None:
        before, after = preds[label]
        if clf.kind(label) == "binary":
            m["cpg"] = abs(after - before)
            m["p_before"], m["p_after"] = before, after
            if target is not None:
                m["flip"] = float((after >= 0.5) == (target >= 0.5))
        else:
            m["attribute_change"] = after - before
            if target is not None:
                m["attribute_error"] = abs(after - target)
    return m, info, feats[0:1], feats[1:2]


def score_pair(pair: Pair, clf=None, clip=None, options: EvalOptions = EvalOptions()) -> tuple[dict, Any]:
    lp = read_pair(pair)
    x, xcf = lp.original, lp.counterfactual
    metrics = identity_metrics(x, xcf)
    extra: dict[str, Any] = {"window": lp.window, "shape": list(x.shape[1:])}
    feats = {}
    if lp.truth is not None:
        metrics.update(truth_metrics(x, xcf, lp.truth, lp.region))
        if lp.floor is not None:
            metrics.update(floor_metrics(x, lp.floor, lp.truth))
        if lp.sample_floor is not None:
            metrics.update(floor_metrics(x, lp.sample_floor, lp.truth, prefix="gt_sample_floor"))
        if lp.edit_region is not None:
            metrics.update(mask_metrics(lp.edit_region, true_region(x, lp.truth, lp.region)))
    if pair.labels is not None:
        from cfgen.evaluation import ct

        metrics.update(ct.pair_measures(*lp.scans, pair.labels, pair.counterfactual_labels,
                                        options.ct_labels or ct.parse_labels(None)))
    if clf is not None and x.ndim - 2 != int(clf.config["spatial_dims"]):  # e.g. the 2D default on volumes
        extra["classifier"] = (f"not applied: the classifier is {clf.config['spatial_dims']}D, "
                               f"this pair is {x.ndim - 2}D")
    elif clf is not None:
        m, info, feats["original"], feats["counterfactual"] = classifier_metrics(clf, x, xcf, pair)
        metrics.update(m)
        extra.update(info)
        if lp.truth is not None:
            feats["truth"] = clf.predict(lp.truth)[1]
    if clip is not None and x.ndim == 4:
        metrics.update(clip.scores(x, xcf, pair.source_prompt, pair.prompt))
        extra["passed_filter"] = metrics["clip_direction"] >= options.clip_threshold
    return {"metrics": metrics, **extra}, (lp, feats)


def _rel(p: Path | None, out_dir: Path) -> str | None:
    return os.path.relpath(Path(p).absolute(), out_dir.absolute()) if p is not None else None


def evaluate(pairs: list[Pair], out_dir: Path, classifier=None, clip_model=None,
             options: EvalOptions = EvalOptions(), params: dict | None = None,
             on_item: Callable[[dict], None] | None = None) -> RunReport:
    """Score ``pairs``; ``classifier`` / ``clip_model``: LoadedModel of family classifier / clip, or None."""
    clf = classifier.classifier if classifier is not None else None
    clip = clip_model.clip if clip_model is not None else None
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = RunReport("evaluate", out_dir, {**(params or {}), "clip_threshold": options.clip_threshold,
                                             "rank_by": options.rank_by, "seed": options.seed})
    sets = _Sets()
    rng = np.random.default_rng(options.seed)
    keep = set(rng.permutation(len(pairs))[:MAX_DIVERSITY_IMAGES].tolist())
    for i, pair in enumerate(pairs):
        item: dict[str, Any] = {"name": pair.name, "input": _rel(pair.original, out_dir),
                                "counterfactual": _rel(pair.counterfactual, out_dir),
                                "true_counterfactual": _rel(pair.truth, out_dir), "status": "error",
                                "error": pair.error, "seed": options.seed, "outputs": {}, "metrics": {}}
        if pair.error is None:
            try:
                scored, (lp, feats) = score_pair(pair, clf, clip, options)
                item.update(scored, status="ok")
                item.setdefault("label", pair.label)  # the classifier may have read it from the prompts
                item.setdefault("target", pair.target)
                for k, f in feats.items():
                    sets.feats[k].append(f)
                if i in keep:
                    sets.images["original"].append(lp.original)
                    sets.images["counterfactual"].append(lp.counterfactual)
            except CfgenError as exc:
                item["error"] = str(exc)
        report.add_item(item)
        if on_item:
            on_item(item)
    report.data["sets"] = set_metrics(sets, clf is not None)
    truth = ground_truth_summary(report.data["items"], options.seed)
    if truth is not None:
        report.data["sets"]["ground_truth"] = truth
    report.data["sources"] = sources(classifier, clip_model, sets)
    report.summarize()
    if options.figures and options.figure_format != "none":
        report.data["outputs"] = write_figures(report, pairs, out_dir, options)
    report.data["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    report.html = True
    report.html_images = list((report.data.get("outputs") or {}).values())
    report.write()
    return report


def set_metrics(sets: _Sets, have_features: bool) -> dict[str, Any]:
    import torch

    from cfgen.evaluation import distribution as d

    out: dict[str, Any] = {}
    if have_features and sets.feats["counterfactual"]:
        f = {k: torch.cat(v) for k, v in sets.feats.items() if v}
        out["fid_vs_originals"] = d.fid(f["counterfactual"], f["original"])
        out["mmd_vs_originals"] = d.mmd(f["counterfactual"], f["original"])
        if "truth" in f:
            out["fid_vs_truth"] = d.fid(f["counterfactual"], f["truth"])
            out["mmd_vs_truth"] = d.mmd(f["counterfactual"], f["truth"])
            out["fid_truth_vs_originals"] = d.fid(f["truth"], f["original"])
        out["n_features"] = {k: int(len(v)) for k, v in f.items()}
    div_cf = d.diversity(sets.images["counterfactual"])
    div_orig = d.diversity(sets.images["original"])
    out["diversity_ms_ssim"] = {"counterfactual": div_cf["value"], "original": div_orig["value"],
                                "pairs": div_cf["pairs"]}
    return out


def edit_type(label: str | None, target: float | None) -> str:
    """The group an item's edit belongs to: "Pleural Effusion -> 1" (added) or "-> 0" (removed) for
    a binary target, else its label alone ("Age": targets of every value)."""
    if label is None:
        return "unlabelled"
    if target in (0.0, 1.0):
        return f"{label} -> {int(target)}"
    return label


def _pooled(items: list[dict], seed: int) -> dict[str, Any]:
    from cfgen.metrics.stats import finite_values, pooled_ratio

    m = [it["metrics"] for it in items]
    out = pooled_ratio([x.get("gt_l1") for x in m], [x.get("gt_l1_nothing") for x in m], seed=seed)
    ratios = finite_values(x.get("gt_error_ratio") for x in m)  # the mean alone: no bootstrap needed here
    out["mean_of_item_ratios"] = float(ratios.mean()) if ratios.size else None
    for key in ("floor", "sample_floor"):  # what an ideal (sampling) editor reaches on the same items
        if any(f"gt_{key}_l1" in x for x in m):
            out[key] = pooled_ratio([x.get(f"gt_{key}_l1") for x in m], [x.get("gt_l1_nothing") for x in m],
                                    seed=seed)
    return out


def ground_truth_summary(items: list[dict], seed: int = 0) -> dict[str, Any] | None:
    """The headline ground-truth figure: the pooled error ratio (summed error to the true
    counterfactual / summed error of doing nothing) with a 95% bootstrap interval, over all items
    and per edit type, beside the mean of the per-item ratios (which small true changes inflate)."""
    scored = [it for it in items if it["status"] == "ok" and "gt_l1" in it["metrics"]]
    if not scored:
        return None
    groups: dict[str, list[dict]] = {}
    for it in scored:
        groups.setdefault(edit_type(it.get("label"), it.get("target")), []).append(it)
    return {"pooled_error_ratio": _pooled(scored, seed),
            "by_edit_type": {k: _pooled(v, seed) for k, v in sorted(groups.items())},
            "definition": "pooled_error_ratio = sum(gt_l1) / sum(gt_l1_nothing) over the items; "
                          "mean_of_item_ratios = mean(gt_error_ratio); floor = sum(gt_floor_l1) / "
                          "sum(gt_l1_nothing), the ideal editor's pooled ratio; sample_floor: the same for "
                          "the ideal editor that draws what the scan and prompt do not show (gt_sample_floor_l1)"}


def sources(classifier, clip_model, sets: _Sets) -> dict[str, Any]:
    """What produced each number, so that results stay comparable."""
    shapes = sorted({tuple(im.shape[1:]) for im in sets.images["original"]})
    src: dict[str, Any] = {
        "identity": "l1 (PRISM, images in [0, 1]); psnr, ssim, ms_ssim: MONAI metrics, data range 1",
        "image_shapes": [list(s) for s in shapes],
        "fid_mmd": ("MONAI FIDMetric / MMDMetric (linear kernel, unbiased) on the classifier's features"
                    if classifier is not None else "not computed: no classifier"),
        "diversity": f"mean pairwise MS-SSIM over up to {MAX_DIVERSITY_IMAGES} images per set",
    }
    if classifier is not None:
        src["classifier"] = {"model": classifier.report_info(), **classifier.classifier.describe()}
    else:
        src["classifier"] = "not computed: no classifier (--classifier none)"
    src["clip"] = ({"model": clip_model.report_info(), **clip_model.clip.describe()} if clip_model is not None
                   else "not computed: no --clip model given")
    return src


def _ranked(report: RunReport, metric: str) -> list[dict]:
    ok = [it for it in report.data["items"]
          if it["status"] == "ok" and isinstance(it["metrics"].get(metric), (int, float))]
    return sorted(ok, key=lambda it: it["metrics"][metric], reverse=metric not in LOWER_IS_BETTER)


def write_figures(report: RunReport, pairs: list[Pair], out_dir: Path, options: EvalOptions) -> dict[str, str]:
    from cfgen.viz.figures import as_2d, write_examples, write_histograms

    items = report.data["items"]
    have_truth = any("gt_error_ratio" in it["metrics"] for it in items)
    metric = options.rank_by or ("gt_error_ratio" if have_truth else "l1")
    ranked = _ranked(report, metric)
    outputs: dict[str, str] = {}
    if ranked:
        by_name = {p.name: p for p in pairs}
        picks = [("best", ranked[0]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[-1])]
        rows = []
        for title, it in picks:
            lp = read_pair(by_name[it["name"]])
            rows.append({"title": f"{title}: {it['name']}\n{metric} = {it['metrics'][metric]:.4g}",
                         "original": as_2d(lp.original[0].numpy()), "counterfactual": as_2d(lp.counterfactual[0].numpy()),
                         "truth": as_2d(lp.truth[0].numpy()) if lp.truth is not None else None})
        outputs["examples"] = write_examples(rows, out_dir / f"examples.{options.figure_format}", metric).name
    values: dict[str, list[float]] = {}
    for it in items:
        if it["status"] == "ok":
            for k, v in it["metrics"].items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
                    values.setdefault(k, []).append(float(v))
    if values:
        outputs["histograms"] = write_histograms(values, out_dir / f"histograms.{options.figure_format}").name
    report.data["params"]["rank_by"] = metric
    return outputs


def check_rank_metric(name: str | None) -> None:
    if name is not None and name not in ITEM_METRICS:
        raise UsageError(f"--rank-by {name}: not a per-item metric (use one of {', '.join(ITEM_METRICS)})")
