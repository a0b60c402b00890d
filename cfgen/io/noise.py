"""What the readers' libraries say while a scan is read (Python warnings, pydicom's and nibabel's
log lines, numpy RuntimeWarnings) is kept with that scan instead of being printed before cfgen's
own line: ``with captured() as notes: ...``. Per thread, so the runner's reader threads keep
their notes apart. SimpleITK's C++ warnings are switched off (cfgen checks series itself)."""
from __future__ import annotations

import contextlib
import logging
import threading
import warnings

_local = threading.local()
_installed = False
_lock = threading.Lock()
LOGGERS = ("pydicom", "nibabel", "highdicom")


def _sink() -> list[str] | None:
    return getattr(_local, "sink", None)


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        sink = _sink()
        if sink is not None:
            sink.append(f"{record.name}: {record.getMessage()}")
        elif record.levelno >= logging.WARNING:
            logging.lastResort.handle(record)


def _install() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            sink = _sink()
            if sink is None:
                original(message, category, filename, lineno, file, line)
            else:
                sink.append(f"{category.__name__}: {message}")

        warnings.showwarning = show
        # every occurrence, so each scan's notes are complete (only for the readers' libraries)
        warnings.filterwarnings("always", module=r"(pydicom|nibabel|numpy|highdicom|PIL)(\.|$)")
        for name in LOGGERS:
            log = logging.getLogger(name)
            log.addHandler(_Handler())
            log.propagate = False
        _installed = True


@contextlib.contextmanager
def captured():
    """The notes (one string each) that the libraries emit in this thread inside the block."""
    _install()
    notes: list[str] = []
    outer, _local.sink = _sink(), notes
    try:
        yield notes
    finally:
        _local.sink = outer
        if outer is not None:
            outer.extend(notes)


def quiet_itk() -> None:
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalWarningDisplay(False)
