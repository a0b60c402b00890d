"""`--template ct`: report-like captions for chest CT label tables (cfgen phantoms ct's labels.csv).

Columns (any present; names case-insensitive): Age, Sex, effusion (none/small/large, or a volume in
mL), effusion_side, emphysema (none/mild/severe), emphysema_type, Cardiomegaly (0/1), nodules
(count). E.g. "Chest CT of a 63 year old male: large right pleural effusion, severe centrilobular
emphysema, cardiomegaly, 2 pulmonary nodules".
"""
from __future__ import annotations

from typing import Callable

from cfgen.errors import InputError

FIELDS = ("age", "sex", "effusion", "effusion_side", "emphysema", "emphysema_type", "cardiomegaly", "nodules")
_SEX = {"f": "female", "female": "female", "m": "male", "male": "male"}
_SIDE = {"both": "bilateral", "bilateral": "bilateral", "right": "right", "left": "left"}


def _effusion(value: str, side: str) -> str:
    if value.lower() in ("", "none", "0", "no"):
        return "no pleural effusion"
    where = _SIDE.get(side.lower(), side)
    try:
        size = f"{float(value):g} mL"
    except ValueError:
        size = value.lower()
    return " ".join(w for w in (size, where, "pleural effusion") if w)


def _findings(get: Callable[[str], str], where: str) -> list[str]:
    out = []
    if get("effusion") or get("effusion_side"):
        out.append(_effusion(get("effusion"), get("effusion_side")))
    emph = get("emphysema").lower()
    if emph:
        out.append("no emphysema" if emph in ("none", "0", "no") else f"{emph} {get('emphysema_type')} emphysema".replace("  ", " "))
    cm = get("cardiomegaly")
    if cm:
        out.append("cardiomegaly" if cm in ("1", "1.0", "yes", "true") else "normal heart size")
    nod = get("nodules")
    if nod:
        try:
            k = int(float(nod))
        except ValueError:
            raise InputError(f"{where}: nodules {nod!r} is not a count") from None
        out.append("no pulmonary nodules" if k == 0 else f"{k} pulmonary nodule{'s' if k > 1 else ''}")
    return out


def ct_template(columns: list[str], where: str) -> Callable[[dict], str]:
    lower = {c.lower().strip(): c for c in columns}
    found = {f: lower.get(f) for f in FIELDS}
    if not any(found[f] for f in FIELDS[2:]):
        raise InputError(f"{where}: the ct template needs at least one of effusion, emphysema, cardiomegaly, "
                         f"nodules; found {', '.join(columns) or 'none'}")

    def caption(row: dict) -> str:
        get = lambda k: (row.get(found[k]) or "").strip() if found[k] else ""  # noqa: E731
        who = []
        if get("age"):
            try:
                who.append(f"{float(get('age')):g} year old")
            except ValueError:
                raise InputError(f"{where}: age {get('age')!r} is not a number") from None
        if get("sex"):
            who.append(_SEX.get(get("sex").lower(), get("sex")))
        text = "Chest CT" + (" of a " + " ".join(who) if who else "")
        findings = _findings(get, where)
        return text + (": " + ", ".join(findings) if findings else "")

    return caption
