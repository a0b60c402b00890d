"""Every bad input: one clear line, the right exit code, no traceback, inputs untouched,
nothing written outside the output folder (cases in bad_cases.py; table: scripts/bad_input_table.py)."""
from __future__ import annotations

import pytest

from bad_cases import CASES, run_case
from bad_cases_kinds import KIND_CASES

ALL = CASES + KIND_CASES


@pytest.mark.parametrize("case", ALL, ids=[c.name for c in ALL])
def test_bad_input(case, tiny_model, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    out = run_case(case, work, tiny_model)
    assert out.code == case.code, out.stderr
    assert case.message in out.stderr, out.stderr
    assert out.one_line_errors and "internal error" not in out.stderr, out.stderr
    assert out.inputs_untouched and out.nothing_outside
