#!/usr/bin/env bash
# Install the lowest dependency versions cfgen declares (constraints/floors.txt) into .venv-floors
# and run the test suite there: the floors in pyproject.toml are the ones this passes with.
# Usage: bash scripts/check_floors.sh [pytest args]   (about 4 min of installing, then the suite)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
[ -x .venv-floors/bin/python ] || "$py" -m venv .venv-floors
pip_q() { .venv-floors/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; return "${PIPESTATUS[0]}"; }
pip_q "torch==2.13.0"
pip_q -e ".[test]" -c constraints/floors.txt
# what was installed must be the floors: pip may not silently take another version
.venv-floors/bin/python - <<'PY'
import re
from importlib.metadata import version
bad = []
for line in open("constraints/floors.txt"):
    m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
    if m and not version(m[1]).split("+")[0] == m[2]:
        bad.append(f"{m[1]} {version(m[1])} (floor {m[2]})")
if bad:
    raise SystemExit("not the floors: " + ", ".join(bad))
print("floors installed:", sum(1 for l in open("constraints/floors.txt") if "==" in l), "packages")
PY
exec .venv-floors/bin/python -m pytest -q "$@"
