"""`cfgen evaluate`: score counterfactuals from an edit run or a CSV of pairs."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cfgen.cli.common import (Device, DeviceOpt, FigureFormatOpt, JsonOpt, QuietOpt, handle_errors, out_option,
                              print_item_errors, print_json, seed_option)

SHOWN_SETS = ("fid_vs_originals", "fid_vs_truth", "fid_truth_vs_originals", "mmd_vs_originals", "mmd_vs_truth")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    s = report["summary"]
    table = Table(title=f"cfgen evaluate: {s['ok']} scored, {s['error']} failed")
    for col in ("metric", "mean", "std", "95% CI", "n"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, d in s["metrics"].items():
        ci = d["ci95"]
        table.add_row(name, _fmt(d["mean"]), _fmt(d["std"]), f"{_fmt(ci[0])} .. {_fmt(ci[1])}" if ci else "-",
                      str(d["n"]))
    sets = report.get("sets", {})
    for name in SHOWN_SETS:
        if sets.get(name) is not None:
            table.add_row(name, _fmt(sets[name]), "", "", str(sets.get("n_features", {}).get("counterfactual", "")))
    div = sets.get("diversity_ms_ssim", {})
    if div.get("counterfactual") is not None:
        table.add_row("diversity_ms_ssim (cf / orig)", f"{_fmt(div['counterfactual'])} / {_fmt(div['original'])}",
                      "", "", f"{div['pairs']} pairs")
    truth = sets.get("ground_truth")
    if truth:
        for name, d in [("all", truth["pooled_error_ratio"]), *truth["by_edit_type"].items()]:
            for what, v in (("pooled error ratio", d), ("  floor (ideal editor)", d.get("floor")),
                            ("  sample floor (ideal sampling editor)", d.get("sample_floor"))):
                if v is not None:
                    ci = v["ci95"]
                    table.add_row(f"{what}: {name}", _fmt(v["value"]), "",
                                  f"{_fmt(ci[0])} .. {_fmt(ci[1])}" if ci else "-", str(v["n"]))
    Console(stderr=True).print(table)


@handle_errors
def evaluate(
    source: Annotated[Path, typer.Argument(help="An edit run's report.json (or its folder), or a CSV with "
                                                "original, counterfactual [, label, target, true_counterfactual, mask, "
                                                "source_prompt, prompt, name, labels, counterfactual_labels]; - reads the CSV from standard input")],
    out: out_option("Output folder for report.json and figures") = Path("evaluation"),
    classifier: Annotated[Optional[str], typer.Option(help="Classifier entry or folder for CPG, flip rate, FID/MMD features; 'none' to skip [default: the registry's default_classifier]")] = None,
    clip: Annotated[Optional[str], typer.Option(help="CLIP entry or folder for CLIP scores [default: none]")] = None,
    clip_threshold: Annotated[float, typer.Option(help="Items with S_CLIP (clip_direction) below this are marked passed_filter=false (PRISM: 0.1)")] = 0.1,
    rank_by: Annotated[Optional[str], typer.Option(help="Metric that picks the best/median/worst examples [default: gt_error_ratio with ground truth, else l1]")] = None,
    figures: Annotated[bool, typer.Option(help="Write the examples and histograms figures")] = True,
    figure_format: FigureFormatOpt = "png",
    ct_labels: Annotated[Optional[str], typer.Option("--ct-labels", help="CT measures (pairs with a labels column): "
                                                     "label ids of the label maps, e.g. lung=1-5,airway=6,vessel=7,"
                                                     "heart=8,effusion=9 (the default)")] = None,
    seed: seed_option("Seed of the bootstrap and of the diversity sample") = 0,
    device: DeviceOpt = Device.auto,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score counterfactuals: identity, classifier gain, CLIP, distribution and ground-truth metrics."""
    from cfgen.cli.progress import simple_progress
    from cfgen.evaluation.pairs import load_pairs
    from cfgen.evaluation.run import EvalOptions, check_rank_metric, evaluate as run_evaluate
    from cfgen.models.loader import load_model
    from cfgen.models.registry import load_registry
    from cfgen.viz.style import FigureOptions

    from cfgen.evaluation.ct import parse_labels

    check_rank_metric(rank_by)
    ids = parse_labels(ct_labels)
    FigureOptions(figure_format).check()
    pairs = load_pairs(source)
    registry = load_registry()
    clf_name = classifier if classifier is not None else registry.default_classifier
    clf = None
    if clf_name and clf_name != "none":
        clf = load_model(clf_name, device=device.value, registry=registry, family="classifier", option="--classifier")
    clip_model = load_model(clip, device=device.value, registry=registry, family="clip", option="--clip") if clip else None
    options = EvalOptions(rank_by=rank_by, clip_threshold=clip_threshold, seed=seed, figures=figures,
                          figure_format=figure_format, ct_labels=ids)
    params = {"source": str(source), "classifier": clf_name, "clip": clip, "device": device.value}
    with simple_progress(len(pairs), "evaluate", quiet) as tick:
        report = run_evaluate(pairs, out, clf, clip_model, options, params,
                              on_item=(lambda _it: tick()) if tick else None)
    print_item_errors(report.data["items"])
    if json_out:
        print_json(report.data)
    elif not quiet:
        print_table(report.data)
        typer.echo(f"report: {report.path}", err=True)
    if report.failed:
        raise typer.Exit(1)
