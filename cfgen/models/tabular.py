"""Tabular conditioning: field values (age, sex, diagnosis, lesion load) -> cross-attention tokens.

A model conditioned on values keeps the prompt interface of the text models. A prompt is parsed
into field values, either as ``key=value`` pairs (``"age=85, lesion_load=20"``) or as caption
text through the patterns in the model's config (``"Brain MRI of a 85 year old female, lesion
load 20 mL"``: the brain caption template parses back). A field the prompt does not give is
*missing* and gets its own learned token: ``""`` is the unconditional prompt of classifier-free
guidance, and ``"age=85"`` conditions on age alone (training drops each field independently).

The prompt becomes a (F, 2) row per prompt: [value, present] with numeric values scaled to
[0, 1] by the field's range and categories as their index. The UNet adapter embeds the rows
(:class:`TabularEmbedding`, trained with the UNet), so the editing loop passes them where a text
model passes hidden states, unchanged.

Config: the key ``conditioning`` of ``unet/config.json``; weights in ``unet/conditioner.safetensors``::

  {"fields": [
     {"name": "age", "type": "numeric", "min": 0, "max": 100,
      "patterns": ["(\\\\d+(?:\\\\.\\\\d+)?)[ -]year[ -]old"]},
     {"name": "sex", "type": "categorical", "values": ["female", "male"],
      "aliases": {"f": "female", "m": "male"}, "patterns": {"female": ["\\\\bfemale\\\\b"], ...}},
     {"name": "lesion_load", "type": "numeric", "min": 0, "max": 40, "phrases": {"no lesions": 0}}]}
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from cfgen.errors import ModelError, UsageError

CONDITIONER_WEIGHTS = "conditioner.safetensors"
_NUM = r"(\d+(?:\.\d+)?)"


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # "numeric" | "categorical"
    min: float = 0.0
    max: float = 1.0
    values: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    patterns: Any = ()  # numeric: regexes with one group; categorical: {value: [regex, ...]}
    phrases: dict[str, float] = field(default_factory=dict)  # numeric: fixed phrases -> value

    def code(self, raw: str, prompt: str) -> float:
        """The stored value of ``raw`` (scaled number, or category index)."""
        if self.type == "numeric":
            try:
                v = float(raw)
            except ValueError:
                raise UsageError(f"prompt '{prompt}': {self.name} '{raw}' is not a number") from None
            if not (self.min <= v <= self.max) or math.isnan(v):
                raise UsageError(f"prompt '{prompt}': {self.name} {v:g} is outside [{self.min:g}, {self.max:g}]")
            return (v - self.min) / (self.max - self.min)
        key = raw.strip().lower()
        key = {k.lower(): v for k, v in self.aliases.items()}.get(key, key)
        lowered = [v.lower() for v in self.values]
        if key not in lowered:
            raise UsageError(f"prompt '{prompt}': {self.name} '{raw}' is not one of {', '.join(self.values)}")
        return float(lowered.index(key))


def parse_fields(cfg: Any, where: str) -> list[Field]:
    """Fields of a ``conditioning`` table, validated (ModelError naming ``where``)."""
    fields = cfg.get("fields") if isinstance(cfg, dict) else None
    if not isinstance(fields, list) or not fields:
        raise ModelError(f"{where}: 'conditioning' needs a non-empty 'fields' list")
    out = []
    for f in fields:
        try:
            kind = f["type"]
            if kind == "numeric":
                fd = Field(f["name"], kind, float(f["min"]), float(f["max"]), patterns=tuple(f.get("patterns", ())),
                           phrases={k.lower(): float(v) for k, v in f.get("phrases", {}).items()})
                if not fd.max > fd.min:
                    raise ValueError("max must exceed min")
            elif kind == "categorical":
                fd = Field(f["name"], kind, values=tuple(f["values"]), aliases=dict(f.get("aliases", {})),
                           patterns={k: list(v) for k, v in f.get("patterns", {}).items()})
                if len(fd.values) < 2:
                    raise ValueError("needs at least two values")
            else:
                raise ValueError(f"type '{kind}' is not numeric or categorical")
            for rx in (fd.patterns if kind == "numeric" else [r for rs in fd.patterns.values() for r in rs]):
                re.compile(rx)
        except (KeyError, TypeError, ValueError, re.error) as exc:
            raise ModelError(f"{where}: conditioning field {f!r}: {exc}") from None
        out.append(fd)
    if len({f.name for f in out}) != len(out):
        raise ModelError(f"{where}: conditioning field names repeat")
    return out


def _from_text(f: Field, text: str, prompt: str) -> float | None:
    low = text.lower()
    if f.type == "numeric":
        for phrase, value in f.phrases.items():
            if phrase in low:
                return f.code(str(value), prompt)
        for rx in f.patterns:
            m = re.search(rx, low)
            if m:
                return f.code(m.group(1), prompt)
        return None
    for value, rxs in f.patterns.items():
        if any(re.search(rx, low) for rx in rxs):
            return f.code(value, prompt)
    return None


def parse_prompt(prompt: str, fields: list[Field]) -> dict[str, float]:
    """{field: stored value} for the fields the prompt gives; UsageError for what cannot be read."""
    by_name = {f.name.lower(): f for f in fields}
    if "=" in prompt:
        got = {}
        for part in re.split(r"[,;]", prompt):
            if not part.strip():
                continue
            key, sep, raw = part.partition("=")
            f = by_name.get(key.strip().lower())
            if not sep or f is None:
                raise UsageError(f"prompt '{prompt}': '{part.strip()}' is not <field>=<value> with a field of "
                                 f"{', '.join(x.name for x in fields)}")
            got[f.name] = f.code(raw.strip(), prompt)
        return got
    got = {f.name: v for f in fields if (v := _from_text(f, prompt, prompt)) is not None}
    if prompt.strip() and not got:
        raise UsageError(f"prompt '{prompt}': names none of this model's fields ({', '.join(x.name for x in fields)}); "
                         "give them as field=value")
    return got


def changed_fields(source: str, target: str, fields: list[Field]) -> list[str]:
    """The fields an edit asks to change: given by the target prompt, with another value than the
    source prompt's (or one the source prompt does not give)."""
    before, after = parse_prompt(source, fields), parse_prompt(target, fields)
    return [name for name, value in after.items() if before.get(name) != value]


#: [defaults] keys listing fields a model does not render faithfully: edits and synthesis refused, edits alone
UNRELIABLE_KEYS = ("unreliable_fields", "unreliable_edits")


def check_editable(model_name: str, defaults: dict[str, Any], source: str, target: str, fields: list[Field]) -> None:
    """A usage error when the edit changes a field the model's ``[defaults] unreliable_fields`` or
    ``unreliable_edits`` lists: its benchmark found such edits wrong, and a wrong counterfactual that looks
    plausible is worse than none."""
    lists = {name: key for key in UNRELIABLE_KEYS for name in defaults.get(key, [])}
    asked = [name for name in changed_fields(source, target, fields) if name in lists]
    if asked:
        raise UsageError(f"prompt '{target}': changes {asked[0]}, which model '{model_name}' does not render faithfully "
                         f"(its [defaults] {lists[asked[0]]} lists it: such edits measured wrong); give {asked[0]} the "
                         "source prompt's value or leave it out of the target prompt, or use a model validated for it")


def check_synthesizable(model_name: str, defaults: dict[str, Any], prompt: str, fields: list[Field]) -> None:
    """A usage error when a synthesis prompt asks for an unreliable field (``[defaults] unreliable_fields``)
    at a value other than its lowest (numeric min, or the first category: "no nodules" is what such a model
    draws; "3 nodules" it would silently leave out)."""
    unreliable = set(defaults.get("unreliable_fields", []))
    asked = [name for name, value in parse_prompt(prompt, fields).items() if name in unreliable and value != 0.0]
    if asked:
        raise UsageError(f"prompt '{prompt}': asks for {asked[0]}, which model '{model_name}' does not render "
                         f"faithfully (its [defaults] unreliable_fields lists it); leave {asked[0]} out of the "
                         "prompt or give its lowest value, or use a model validated for it")


def encode_values(prompts: list[str], fields: list[Field]) -> torch.Tensor:
    """(B, F, 2): [value, present] rows for the UNet adapter's embedding."""
    rows = []
    for p in prompts:
        got = parse_prompt(p, fields)
        rows.append([[got.get(f.name, 0.0), float(f.name in got)] for f in fields])
    return torch.tensor(rows, dtype=torch.float32).reshape(len(prompts), len(fields), 2)


def drop_fields(values: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Training: each field missing with probability ``p``, and whole rows with probability ``p``."""
    b, n, _ = values.shape
    keep = (torch.rand(b, n, generator=gen) >= p) & (torch.rand(b, 1, generator=gen) >= p)
    out = values.clone()
    out[..., 1] = out[..., 1] * keep.to(out.device, out.dtype)
    return out


class TabularEmbedding(torch.nn.Module):
    """[value, present] per field -> one token per field (numeric: Fourier features + MLP;
    categorical: an embedding table; missing: a learned token) plus a field embedding."""

    def __init__(self, fields: list[Field], dim: int, frequencies: int = 6):
        super().__init__()
        self.kinds = [f.type for f in fields]
        self.register_buffer("freqs", (2.0 ** torch.arange(frequencies)) * math.pi, persistent=False)
        self.numeric = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(1 + 2 * frequencies, dim), torch.nn.SiLU(), torch.nn.Linear(dim, dim))
            if f.type == "numeric" else torch.nn.Embedding(len(f.values), dim) for f in fields)
        self.missing = torch.nn.Parameter(torch.randn(len(fields), dim) * 0.02)
        self.field = torch.nn.Parameter(torch.randn(len(fields), dim) * 0.02)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        tokens = []
        for i, (kind, net) in enumerate(zip(self.kinds, self.numeric)):
            v, present = values[:, i, 0:1].float(), values[:, i, 1:2].float()
            if kind == "numeric":
                x = v * self.freqs
                emb = net(torch.cat([v, torch.sin(x), torch.cos(x)], dim=1))
            else:
                emb = net(v[:, 0].round().long().clamp(0, net.num_embeddings - 1))
            tokens.append(present * emb + (1 - present) * self.missing[i])
        return torch.stack(tokens, dim=1) + self.field


#: the fields of the brain phantoms, parsing the brain caption template (cfgen caption --template brain)
BRAIN_FIELDS: dict = {"fields": [
    {"name": "age", "type": "numeric", "min": 0, "max": 100, "patterns": [_NUM + r"[ -]years?[ -]old", r"age[ :]+" + _NUM]},
    {"name": "sex", "type": "categorical", "values": ["female", "male"],
     "aliases": {"f": "female", "m": "male", "woman": "female", "man": "male"},
     "patterns": {"female": [r"\bfemale\b", r"\bwoman\b"], "male": [r"\bmale\b", r"\bman\b"]}},
    {"name": "diagnosis", "type": "categorical", "values": ["CN", "MCI", "AD"],
     "aliases": {"cognitively normal": "CN", "mild cognitive impairment": "MCI", "alzheimer's disease": "AD",
                 "dementia": "AD"},
     "patterns": {"CN": [r"cognitively normal", r"\bno cognitive impairment\b"],
                  "MCI": [r"\bmild cognitive impairment\b", r"\bmci\b"],
                  "AD": [r"alzheimer", r"\bdementia\b"]}},
    {"name": "lesion_load", "type": "numeric", "min": 0, "max": 40,
     "phrases": {"no lesions": 0, "no lesion": 0, "high lesion load": 25, "low lesion load": 5},
     "patterns": [r"lesion[ _]load[ :]*" + _NUM]},
]}

#: the fields of the chest CT phantoms, parsing the ct caption template (cfgen caption --template ct) and
#: free prompts such as "CT with a large right pleural effusion"; a value's patterns are tried in order
CT_FIELDS: dict = {"fields": [
    BRAIN_FIELDS["fields"][0], BRAIN_FIELDS["fields"][1],
    {"name": "effusion", "type": "categorical", "values": ["none", "small", "large"],
     "patterns": {"none": [r"\bno (?:pleural )?effusion"], "small": [r"\bsmall\b[^,:;]*effusion"],
                  "large": [r"\blarge\b[^,:;]*effusion"]}},
    {"name": "emphysema", "type": "categorical", "values": ["none", "mild", "severe"],
     "patterns": {"none": [r"\bno emphysema\b"], "mild": [r"\bmild\b[^,:;]*emphysema"],
                  "severe": [r"\bsevere\b[^,:;]*emphysema"]}},
    {"name": "cardiomegaly", "type": "categorical", "values": ["no", "yes"],
     "patterns": {"no": [r"\bno cardiomegaly\b", r"\bnormal heart size\b"],
                  "yes": [r"\bcardiomegaly\b", r"\benlarged heart\b"]}},
    {"name": "nodules", "type": "numeric", "min": 0, "max": 10,
     "phrases": {"no pulmonary nodules": 0, "no nodules": 0},
     "patterns": [_NUM + r" (?:pulmonary )?nodules?"]},
]}
