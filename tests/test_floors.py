"""pyproject.toml's floors are the versions scripts/check_floors.sh installs and tests
(constraints/floors.txt): one list cannot move without the other."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _floors() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "constraints" / "floors.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if m:
            out[canonicalize_name(m[1])] = Version(m[2])
    return out


def test_every_dependency_floor_is_the_tested_one():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = _floors()
    checked = 0
    for dep in deps:
        req = Requirement(dep)
        if req.marker is not None and not req.marker.evaluate():
            continue
        lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert lows, f"{dep}: no floor"
        name = canonicalize_name(req.name)
        assert name in floors, f"{dep}: not in constraints/floors.txt"
        assert lows == [floors[name]], f"{dep}: the floor is not the tested {floors[name]}"
        checked += 1
    assert checked == len(floors)
