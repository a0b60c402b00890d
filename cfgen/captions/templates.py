"""Caption templates: ``chexpert`` (PRISM Listing 1), ``brain``, and user format strings.

Each template is a function of one row (a dict of column -> string) returning its caption.
Validation happens once, on the header, before any row is captioned.
"""
from __future__ import annotations

import re
import string
from enum import Enum
from typing import Callable, Iterable

from cfgen.errors import InputError, UsageError

#: The 14 CheXpert observations, in PRISM's order (Listing 1).
CHEXPERT_CONDITIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
NORMAL_CAPTION = "Normal chest X-ray with no significant findings"
NO_DEFINITE_CAPTION = "Chest X-ray with no definite findings"
CHEXPERT_PREFIX = "Chest X-ray showing "


class UncertainPolicy(str, Enum):
    """What to do with an uncertain (-1) or blank CheXpert label.

    ignore: not mentioned, and a row with no positive finding but some ignored labels is not
    called normal (CheXpert's U-Ignore); negative: treated as 0 (U-Zeros); positive: treated
    as 1 (U-Ones); possible: mentioned as "possible <condition>".
    """

    ignore = "ignore"
    negative = "negative"
    positive = "positive"
    possible = "possible"


def _label(value: str | None) -> str:
    """'1', '0', '-1' or '' for a CheXpert cell (accepts 1.0, -1.0, True, blanks)."""
    v = (value or "").strip().lower()
    if v in ("", "nan", "none", "na"):
        return ""
    try:
        f = float(v)
    except ValueError:
        return {"true": "1", "yes": "1", "false": "0", "no": "0"}.get(v, "?" + v)
    return {1.0: "1", 0.0: "0", -1.0: "-1"}.get(f, "?" + v)


def chexpert_template(columns: list[str], uncertain: UncertainPolicy, blank: UncertainPolicy,
                      where: str) -> Callable[[dict], str]:
    present = [c for c in CHEXPERT_CONDITIONS if c in columns]
    if not present:
        raise InputError(f"{where}: no CheXpert label columns (expected some of "
                         f"{', '.join(CHEXPERT_CONDITIONS)}; found {', '.join(columns) or 'none'})")

    def caption(row: dict) -> str:
        findings, possible, unknown = [], [], False
        for cond in present:
            lab = _label(row.get(cond))
            if lab.startswith("?"):
                raise InputError(f"{where}: column '{cond}' has value {lab[1:]!r} (expected 1, 0, -1 or blank)")
            policy = uncertain if lab == "-1" else blank if lab == "" else None
            state = lab
            if policy is UncertainPolicy.positive:
                state = "1"
            elif policy is UncertainPolicy.negative:
                state = "0"
            elif policy is UncertainPolicy.possible:
                state = "possible"
            elif policy is UncertainPolicy.ignore:
                state, unknown = "ignored", True
            if cond == "No Finding":
                continue  # a conclusion, not a finding: the normal sentence says it
            if state == "1":
                findings.append(cond)
            elif state == "possible":
                possible.append(f"possible {cond}")
        return chexpert_caption(findings, possible, unknown)

    return caption


def chexpert_caption(findings: Iterable[str], possible: Iterable[str] = (), unknown: bool = False) -> str:
    """The chexpert template's sentence: findings in PRISM's order, then the "possible ..." ones."""
    order = {c: i for i, c in enumerate(CHEXPERT_CONDITIONS)}
    parts = sorted(findings, key=order.__getitem__) + list(possible)
    if parts:
        return CHEXPERT_PREFIX + ", ".join(parts)
    return NO_DEFINITE_CAPTION if unknown else NORMAL_CAPTION


def parse_chexpert_caption(caption: str) -> tuple[set[str], list[str], bool] | None:
    """(findings, "possible ..." parts, unknown) of a chexpert-template caption; None for any other text."""
    text = caption.strip()
    if text in (NORMAL_CAPTION, NO_DEFINITE_CAPTION):
        return set(), [], text == NO_DEFINITE_CAPTION
    if not text.startswith(CHEXPERT_PREFIX):
        return None
    findings, possible = set(), []
    for part in text[len(CHEXPERT_PREFIX):].split(", "):
        cond = part[len("possible "):] if part.startswith("possible ") else part
        if cond not in CHEXPERT_CONDITIONS or cond == "No Finding":
            return None
        if cond == part:
            findings.add(cond)
        else:
            possible.append(part)
    return findings, possible, False


def toggle_chexpert_finding(caption: str, finding: str) -> str | None:
    """The caption with ``finding`` added or removed (same template); None where the caption is not
    a chexpert-template sentence or calls the finding only possible."""
    parsed = parse_chexpert_caption(caption)
    if parsed is None or f"possible {finding}" in parsed[1]:
        return None
    findings, possible, unknown = parsed
    return chexpert_caption(findings ^ {finding}, possible, unknown)


_BRAIN_ALIASES = {
    "age": ("age", "age_years", "patient_age"),
    "sex": ("sex", "gender", "patient_sex"),
    "diagnosis": ("diagnosis", "dx", "group", "stage"),
    "lesion_load": ("lesion_load", "lesion load", "lesion_volume", "lesions"),
}
_SEX = {"f": "female", "female": "female", "w": "female", "m": "male", "male": "male",
        "0": "female", "1": "male"}
_DX = {"cn": "no cognitive impairment", "mci": "mild cognitive impairment", "ad": "Alzheimer's disease",
       "ms": "multiple sclerosis", "hc": "no known neurological disease"}


def brain_template(columns: list[str], where: str) -> Callable[[dict], str]:
    lower = {c.lower().strip(): c for c in columns}
    found = {k: next((lower[a] for a in al if a in lower), None) for k, al in _BRAIN_ALIASES.items()}
    if not any(found.values()):
        raise InputError(f"{where}: the brain template needs at least one of age, sex, diagnosis, "
                         f"lesion_load; found {', '.join(columns) or 'none'}")

    def caption(row: dict) -> str:
        get = lambda k: (row.get(found[k]) or "").strip() if found[k] else ""  # noqa: E731
        age, sex, dx, lesions = get("age"), get("sex"), get("diagnosis"), get("lesion_load")
        text = "Brain MRI"
        who = []
        if age:
            try:
                who.append(f"{float(age):g} year old")
            except ValueError:
                raise InputError(f"{where}: age {age!r} is not a number") from None
        if sex:
            who.append(_SEX.get(sex.lower(), sex))
        if who:
            text += " of a " + " ".join(who)
        details = []
        if dx:
            details.append(_DX.get(dx.lower(), dx))
        if lesions:
            try:
                vol = float(lesions)
                details.append("no lesions" if vol == 0 else f"lesion load {vol:g} mL")
            except ValueError:
                details.append(f"{lesions} lesion load")
        if details:
            text += " with " + ", ".join(details)
        return text

    return caption


def format_template(fmt: str, columns: list[str], where: str) -> Callable[[dict], str]:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None]
    except ValueError as exc:
        raise UsageError(f"--template '{fmt}': not a valid template ({exc})") from None
    names = [re.split(r"[.\[!:]", f, maxsplit=1)[0] for f in fields]
    missing = [n for n in names if n not in columns]
    if not names or missing:
        what = f"unknown column(s) {', '.join(repr(m) for m in missing)}" if missing else "no {column} field"
        raise InputError(f"{where}: template has {what}; columns found: {', '.join(columns) or 'none'}")

    def caption(row: dict) -> str:
        return fmt.format_map({c: (row.get(c) or "").strip() for c in columns})

    return caption


BUILTIN = ("chexpert", "brain", "ct")


def make_template(name: str, columns: list[str], where: str,
                  uncertain: UncertainPolicy = UncertainPolicy.ignore,
                  blank: UncertainPolicy = UncertainPolicy.negative) -> Callable[[dict], str]:
    if name == "chexpert":
        return chexpert_template(columns, uncertain, blank, where)
    if name == "brain":
        return brain_template(columns, where)
    if name == "ct":
        from cfgen.captions.ct_template import ct_template

        return ct_template(columns, where)
    if "{" in name:
        return format_template(name, columns, where)
    raise UsageError(f"--template {name}: use chexpert, brain, ct, or a string with {{column}} fields")


def caption_rows(rows: Iterable[dict], columns: list[str], template: str, where: str,
                 uncertain: UncertainPolicy = UncertainPolicy.ignore,
                 blank: UncertainPolicy = UncertainPolicy.negative) -> list[str]:
    fn = make_template(template, columns, where, uncertain, blank)
    out = []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            out.append(fn(row))
        except InputError as exc:
            raise InputError(f"{str(exc).replace(where + ':', f'{where} line {i}:', 1)}") from None
    return out
