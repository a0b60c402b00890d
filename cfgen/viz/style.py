"""How a run's figures look: their file format, their units and one colour scale for the run.

Light on purpose (no matplotlib), so the CLI can check the options before loading anything.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from cfgen.errors import UsageError

FIGURE_FORMATS = ("png", "svg", "pdf", "none")  # none: no panel or difference figure (large batches)

#: the difference colour scale (symmetric, +-) when --difference-range is not given, per command:
#: in HU for CT, as a fraction of the intensity window otherwise (an edit changes a structure by a
#: good part of the window; a reconstruction's error is a few per cent of it)
DEFAULT_RANGE = {"edit": 0.5, "invert": 0.1}
DEFAULT_RANGE_HU = {"edit": 500.0, "invert": 100.0}


@dataclass(frozen=True)
class FigureOptions:
    """``format``: png, svg (text kept as text), pdf, or none (edit/invert write no figures);
    ``difference_range``: the colour scale of
    every difference map of the run, +-value in the figure's units (HU for CT scans, fraction of
    the intensity window otherwise); None: DEFAULT_RANGE / DEFAULT_RANGE_HU for the command."""

    format: str = "png"
    difference_range: float | None = None

    def check(self) -> None:
        if self.format not in FIGURE_FORMATS:
            raise UsageError(f"--figure-format {self.format}: use one of {', '.join(FIGURE_FORMATS)}")
        if self.difference_range is not None and not 0.0 < self.difference_range < 1e6:
            raise UsageError(f"--difference-range {self.difference_range}: must be a positive number "
                             "(HU for CT, a fraction of the intensity window otherwise)")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Units:
    """What a difference map's colour bar counts: ``per_window`` of these units per fraction of
    the intensity window (HU: the window's width in HU; otherwise 1)."""

    label: str
    per_window: float
    hu: bool = False
    bar_label: str = ""  # the colour bar's, in short lines


def units_for(scan_units: str | None, window_low: float, window_high: float) -> Units:
    if scan_units == "HU":
        return Units("HU", float(window_high - window_low), hu=True, bar_label="change (HU)")
    window = f"{window_low:.3g}..{window_high:.3g}"
    return Units(f"fraction of the window {window}", 1.0, bar_label=f"change (window fraction,\nwindow {window})")


def colour_range(fig: FigureOptions, command: str, units: Units) -> float:
    """The run's +- colour limit in ``units``: the same for every item of the run."""
    if fig.difference_range is not None:
        return float(fig.difference_range)
    return (DEFAULT_RANGE_HU if units.hu else DEFAULT_RANGE)[command]


#: matplotlib settings for a paper: SVG text stays text, PDF fonts are embedded as TrueType (editable)
PAPER_RC = {"svg.fonttype": "none", "pdf.fonttype": 42, "ps.fonttype": 42}
