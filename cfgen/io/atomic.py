"""Atomic writes: a temporary name in the same folder, then a rename. No half-written files."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual permissions
_UMASK = _umask()


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # keep the full suffix (.nii.gz) so writers that look at the extension still work
    name = target.name
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + name, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _normal_permissions(folder: Path) -> None:
    """Writers such as safetensors create private (0600) files; outputs are not private."""
    os.chmod(folder, 0o777 & ~_UMASK)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~_UMASK)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~_UMASK)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Like atomic_path for a folder (e.g. a DICOM series): build aside, then rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", suffix="-" + target.name, dir=target.parent))
    try:
        yield tmp
        _normal_permissions(tmp)
        if target.is_symlink():  # replace the link itself: never follow it to what it points at
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_atomic(target: Path, writer: Callable[[Path], Any]) -> Path:
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def write_json(target: Path, data: Any) -> Path:
    text = json.dumps(data, indent=2, default=str, allow_nan=True) + "\n"
    return write_atomic(target, lambda p: p.write_text(text, encoding="utf-8"))
