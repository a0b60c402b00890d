"""PRISM's sweep: several prompt-to-prompt variants of each edit in one batch, the best kept.

Scores (higher is better), by the family of the ``--select-by`` model:
  clip        S_CLIP = cos(E_I(x') - E_I(x), E_T(T') - E_T(T)), PRISM Eq. 1 (cfgen/models/clip.py);
  classifier  the probability of the target class for the one label the prompts change
              (the label named in exactly one of them: p if the target names it, else 1 - p).
Images are scored in the model's space, mapped to [0, 1] (x: the prepared scan). Every variant's
score is recorded; the written counterfactual is the best one.
"""
from __future__ import annotations

from typing import Any

import torch

from cfgen.errors import InputError


def describe(selector) -> str:
    return f"{selector.entry.name} ({'S_CLIP' if selector.clip is not None else 'classifier p(target)'})"


def _classifier_scores(clf, cands: torch.Tensor, source: str, prompt: str, where: str) -> list[float]:
    from cfgen.models.classifier import label_from_prompts

    label, target = label_from_prompts(source, prompt, clf.labels)
    if label is None or clf.kind(label) != "binary":
        raise InputError(f"{where}: the sweep's classifier cannot tell which of its labels "
                         f"({', '.join(clf.labels)}) the prompts change; name exactly one in one of the two "
                         "prompts, or select with a CLIP model (--select-by)")
    p = clf.predict(cands)[0][label]
    return [float(v) for v in (p if target >= 0.5 else 1 - p)]


def scores(selector, x: torch.Tensor, cands: torch.Tensor, source: str, prompt: str, where: str) -> list[float]:
    """One score per candidate; ``x`` (1, C, ...) and ``cands`` (K, C, ...) in [0, 1]."""
    if selector.classifier is not None:
        return _classifier_scores(selector.classifier, cands, source, prompt, where)
    return [selector.clip.scores(x, c[None], source, prompt)["clip_direction"] for c in cands]


def select(selector, x: torch.Tensor, cands: torch.Tensor, ps, selfs: list[float], where: list[str]
           ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Per item the best of its variants: ``x`` (n, ...) the inputs, ``cands`` (K * n, ...)
    variant-major, both in [0, 1]; returns the chosen candidates' indices into ``cands`` and the
    records (every variant's score)."""
    n, chosen, records = len(ps), [], []
    for i, p in enumerate(ps):
        own = cands[i::n]
        s = scores(selector, x[i:i + 1], own, p.source_prompt, p.prompt, where[i])
        best = max(range(len(s)), key=lambda k: s[k])
        chosen.append(best * n + i)
        records.append({"selected_by": describe(selector), "self_attention": selfs[best],
                        "variants": [{"self_attention": f, "score": round(v, 6)} for f, v in zip(selfs, s)]})
    return torch.tensor(chosen, dtype=torch.long), records
