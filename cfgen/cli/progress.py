"""Rich progress for runs over many items and denoising steps (off with --quiet), on stderr."""
from __future__ import annotations

import contextlib
from typing import Iterator


def stderr_console():
    """Progress and tables go to stderr: stdout carries only a command's data (CSV, JSON)."""
    from rich.console import Console

    return Console(stderr=True)


@contextlib.contextmanager
def run_progress(total_items: int, steps_per_item: int, quiet: bool) -> Iterator[tuple]:
    """Yields (on_item, on_step) callbacks; both no-ops when quiet."""
    if quiet:
        yield (None, None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True, console=stderr_console()) as prog:
        items = prog.add_task("scans", total=total_items)
        steps = prog.add_task("denoising steps", total=steps_per_item)

        def on_step() -> None:
            prog.advance(steps)

        def on_item(job, item) -> None:
            prog.advance(items)
            prog.reset(steps)

        yield (on_item, on_step)


@contextlib.contextmanager
def simple_progress(total: int | None, what: str, quiet: bool) -> Iterator:
    """Yields a tick() callback advancing one bar (None when quiet; total None: open-ended)."""
    if quiet:
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True, console=stderr_console()) as prog:
        task = prog.add_task(what, total=total)
        yield lambda: prog.advance(task)
