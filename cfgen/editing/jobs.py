"""Jobs: one per scan, from a single path or a batch CSV.

Batch CSV columns: ``image`` (required), ``prompt``, and optional ``source_prompt`` (or
``caption``, as written by ``cfgen caption``), ``negative_prompt``, ``strength``, ``seed``,
``mask`` (none, auto, refine or a mask file), ``output`` (the item's folder name). Row values override the command-line values. Relative
image paths are resolved against the CSV's folder. Any other column is carried into the
item's ``columns`` in the run report for ``cfgen evaluate`` (``label``, ``target``,
``true_counterfactual``, ``true_mask``, ``floor_counterfactual``, ...); the file columns of PATH_COLUMNS are resolved
against the CSV's folder like ``image``. Output names may not leave the output
folder; a bad row becomes an error item, and the batch goes on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from cfgen.editing.params import MASK_MODES, EditParams
from cfgen.errors import CfgenError, InputError, UsageError
from cfgen.io.tables import image_column, read_csv

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SCAN_SUFFIXES = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".ima")
MAX_NAME = 120
#: files and folders of OUT that belong to the run, not to an item
RESERVED_NAMES = ("report.json", ".shards")
#: columns the edit itself reads; the rest are carried through to the report
EDIT_COLUMNS = ("image", "prompt", "source_prompt", "caption", "negative_prompt", "strength", "seed", "mask", "output")
#: carried columns that name files (resolved against the CSV's folder)
PATH_COLUMNS = ("true_counterfactual", "true_mask", "floor_counterfactual", "sample_floor_counterfactual", "labels",
                "counterfactual_labels")


@dataclass
class Job:
    row: int | None  # CSV line number (None for a single scan)
    image: str  # as given
    path: Path  # resolved
    name: str  # output folder name
    params: EditParams
    error: str | None = None
    columns: dict[str, str | Path] = field(default_factory=dict)  # carried CSV columns
    warnings: list[str] = field(default_factory=list)  # e.g. prompt text the text encoder will not see

    def label(self) -> str:
        return f"line {self.row}" if self.row else self.image


def default_name(image: str) -> str:
    base = Path(image.rstrip("/\\")).name
    low = base.lower()
    for suf in _SCAN_SUFFIXES:
        if low.endswith(suf):
            base = base[: -len(suf)]
            break
    name = (_SAFE.sub("_", base).strip("._") or "scan")[:MAX_NAME]
    return name + "-scan" if name.lower() in RESERVED_NAMES else name


def check_name(name: str) -> str | None:
    """Why an explicit output name is refused, or None."""
    if not name:
        return "output name is empty"
    if name.lower() in RESERVED_NAMES:
        return f"output name '{name}' is reserved for the run's own files"
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        return f"output name '{name}' must be a plain folder name (no path separators, no leading '.')"
    if _SAFE.search(name):
        return f"output name '{name}' may only use letters, digits, '.', '_' and '-'"
    if len(name) > MAX_NAME:
        return f"output name is longer than {MAX_NAME} characters"
    return None


def check_mask_value(mask: str | None, given_as: str) -> None:
    """A mask is none, auto, refine or a file that exists (``given_as``: how the user gave it, e.g. "--mask")."""
    if mask in (None, "", *MASK_MODES) or Path(mask).is_file():
        return
    if Path(mask).exists():
        raise InputError(f"{mask}: not a regular file ({given_as} takes none, auto, refine or a mask file)")
    raise InputError(f"{mask}: mask file not found ({given_as} takes none, auto, refine or a file)")


def require_prompt(prompt: str | None, message: str, error: type[CfgenError] = UsageError) -> None:
    """An edit needs a target prompt: raise ``error(message)`` when there is none."""
    if not prompt:
        raise error(message)


def single_job(image: str, params: EditParams) -> Job:
    return Job(row=None, image=image, path=Path(image), name=default_name(image), params=params)


def _row_params(row: dict[str, str], base: EditParams, folder: Path, labelled: bool = False) -> EditParams:
    p = replace(base)
    if labelled:  # the model generates anatomy labels: the row's label map is an input of the edit
        if row.get("labels"):
            p.labels = str(folder / row["labels"])
        if not p.labels:
            raise InputError("no label map for this row (empty 'labels' and no --labels); the model generates "
                             "anatomy labels with the image, so each scan needs its own")
        from cfgen.editing.labelled import check_file

        check_file(p.labels, "the 'labels' column")
    if row.get("mask"):
        p.mask = row["mask"] if row["mask"] in MASK_MODES else str(folder / row["mask"])
        check_mask_value(p.mask, "the 'mask' column")
    for key in ("prompt", "negative_prompt"):
        if row.get(key):
            setattr(p, key, row[key])
    src = row.get("source_prompt") or row.get("caption")
    if src:
        p.source_prompt = src
    if row.get("strength"):
        try:
            p.strength = float(row["strength"])
        except ValueError:
            raise InputError(f"strength '{row['strength']}' is not a number") from None
    if row.get("seed"):
        try:
            p.seed = int(row["seed"])
        except ValueError:
            raise InputError(f"seed '{row['seed']}' is not an integer") from None
    try:
        p.check()
    except UsageError as exc:
        raise InputError(str(exc).replace("--", "")) from None
    return p


def _free_name(name: str, line: int, taken: dict[str, int], reserved: set[str]) -> str:
    """``name``, else ``name-<line>``, else ``name-<line>-2``, ...: never a name another row has
    taken or names explicitly in its ``output`` cell (``reserved``)."""
    if name not in taken and name not in reserved:
        return name
    candidate, k = f"{name}-{line}", 2
    while candidate in taken or candidate in reserved:
        candidate, k = f"{name}-{line}-{k}", k + 1
    return candidate


def jobs_from_csv(csv_path: Path, base: EditParams, need_prompt: bool = True, labelled: bool = False) -> list[Job]:
    """One job per row; ``labelled``: the model generates anatomy labels, so a row's ``labels``
    cell (also carried for evaluate) is the scan's label map, the edit's input."""
    columns, rows = read_csv(csv_path)
    image_col = image_column(columns)
    if image_col is None:
        raise InputError(f"{csv_path}: batch CSV needs an 'image' (or 'Path') column; columns found: "
                         f"{', '.join(columns)}")
    if image_col != "image":  # CheXpert's Path, as cfgen caption keeps it
        rows = [{**r, "image": r[image_col]} for r in rows]
    if need_prompt and "prompt" not in columns:
        require_prompt(base.prompt, f"{csv_path}: no 'prompt' column and no --prompt given; columns found: "
                       f"{', '.join(columns)}", InputError)
    folder = csv_path.parent
    jobs: list[Job] = []
    taken: dict[str, int] = {}
    explicit_names = {row["output"] for row in rows if row.get("output")}  # generated names avoid them
    for i, row in enumerate(rows, start=2):
        image = row.get("image", "")
        job = Job(row=i, image=image, path=folder / image, name="", params=base,
                  columns={k: (folder / v if k in PATH_COLUMNS and v else v)
                           for k, v in row.items() if k not in EDIT_COLUMNS})
        explicit = row.get("output", "")
        try:
            if not image:
                raise InputError("the 'image' cell is empty")
            # the name first, so that a row refused below is reported under the name it would have
            # had (and keeps it: the other rows' names do not depend on which rows are valid)
            if explicit:
                why = check_name(explicit)
                if why:
                    raise InputError(why)
                if explicit in taken:
                    raise InputError(f"output name '{explicit}' is also used on line {taken[explicit]}")
                job.name = explicit
            else:
                job.name = _free_name(default_name(image), i, taken, explicit_names)
            taken[job.name] = i
            job.params = _row_params(row, base, folder, labelled)
            if need_prompt:
                require_prompt(job.params.prompt, "no prompt for this row (empty 'prompt' and no --prompt)", InputError)
        except InputError as exc:
            job.error = f"{csv_path} line {i}: {exc}"
        jobs.append(job)
    return jobs
