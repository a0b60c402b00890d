"""Print the bad-input table: case -> exit code -> the one-line message, and whether the
standards hold (one line, no traceback, inputs untouched, nothing outside the output folder).

    python scripts/bad_input_table.py
Runs the same cases as tests/test_bad_inputs.py against a tiny model built in a temp folder.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> int:
    from bad_cases import CASES, run_case
    from bad_cases_kinds import KIND_CASES

    from cfgen.models.build import PRESETS, build_ldm2d

    with tempfile.TemporaryDirectory() as tmp:
        model = build_ldm2d(Path(tmp) / "tiny", PRESETS["tiny"])
        print("| case | exit | ok | message |\n|---|---|---|---|")
        bad = 0
        cases = CASES + KIND_CASES
        for i, case in enumerate(cases):
            work = Path(tmp) / f"case{i:02d}" / "work"
            work.mkdir(parents=True)
            out = run_case(case, work, model)
            ok = out.ok(case)
            bad += not ok
            msg = out.stderr.splitlines()[0] if out.stderr else ""
            msg = msg.replace(str(work) + "/", "").replace(str(work), ".").replace("|", "\\|")
            print(f"| {case.name} | {out.code} | {'yes' if ok else 'NO'} | {msg[:160]} |")
        print(f"\n{len(cases) - bad} passed, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
