"""The item journal (cfgen/journal.py): shards of one CSV in one OUT, two launches on one OUT,
`cfgen report` while shards run, cut lines and stale claims."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cfgen.journal import CLAIM_FILE, JOURNAL_DIR, claim, merged, release


def _csv(folder: Path, n: int) -> Path:
    folder.mkdir()
    rows = ["image,prompt,seed"]
    for i in range(n):
        img = np.random.default_rng(i).uniform(0, 255, (32, 32)).astype(np.uint8)
        Image.fromarray(img).save(folder / f"p{i}.png")
        rows.append(f"p{i}.png,Chest X-ray showing Pleural Effusion,{i}")
    (folder / "jobs.csv").write_text("\n".join(rows) + "\n")
    return folder / "jobs.csv"


def _args(csv: Path, model: Path, out: Path) -> list[str]:
    return ["edit", "--batch", str(csv), "-m", str(model), "--steps", "2", "--mask", "none", "--device", "cpu",
            "-o", str(out), "-q", "--workers", "2", "--figure-format", "none"]  # bookkeeping, not figures


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cfgen.cli.main", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _journal_records(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((out / JOURNAL_DIR).glob("*.jsonl")) for line in p.read_text().splitlines()]


def test_three_shards_in_one_out_equal_one_process(cli, tiny_model, tmp_path):
    csv = _csv(tmp_path / "in", 5)
    shards = tmp_path / "shards"
    procs = [_spawn(_args(csv, tiny_model, shards) + ["--shard", f"{i}/3"]) for i in (1, 2, 3)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    assert cli(*_args(csv, tiny_model, tmp_path / "one")).exit_code == 0
    res = cli("report", shards, "--json")
    assert res.exit_code == 0, res.output
    merged_rep = json.loads((shards / "report.json").read_text())
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    names = [f"p{i}" for i in range(5)]
    assert [it["name"] for it in merged_rep["items"]] == [it["name"] for it in one["items"]] == names
    assert merged_rep["missing"] == [] and merged_rep["summary"]["ok"] == 5
    # contiguous shares: row 1, rows 2-3, rows 4-5 (5 rows in thirds)
    shares = sorted(sorted(json.loads(line)["name"] for line in p.read_text().splitlines())
                    for p in (shards / JOURNAL_DIR).glob("*.jsonl"))
    assert shares == [["p0"], ["p1", "p2"], ["p3", "p4"]]
    for a, b in zip(merged_rep["items"], one["items"]):
        assert a["status"] == b["status"] == "ok"
        assert set(a["outputs"]) == {"counterfactual"} and a["figure"] == {"format": "none"}  # no figures
        assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-5, abs=1e-6)
        assert (shards / a["outputs"]["counterfactual"]).read_bytes() == \
            (tmp_path / "one" / b["outputs"]["counterfactual"]).read_bytes()
    assert not list(shards.glob(f"*/{CLAIM_FILE}"))


def test_two_launches_on_one_out_compute_each_item_once_and_report_all(tiny_model, tmp_path):
    csv = _csv(tmp_path / "in", 4)
    out = tmp_path / "out"
    procs = [_spawn(_args(csv, tiny_model, out)) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    rep = json.loads((out / "report.json").read_text())
    assert [it["name"] for it in rep["items"]] == [f"p{i}" for i in range(4)]
    assert rep["summary"]["error"] == 0 and rep["missing"] == []
    computed = [r["name"] for r in _journal_records(out) if r["status"] == "ok"]
    assert sorted(computed) == [f"p{i}" for i in range(4)]  # each item computed by exactly one process


def test_report_while_a_shard_has_not_run_lists_what_is_missing(cli, tiny_model, tmp_path):
    csv = _csv(tmp_path / "in", 4)
    out = tmp_path / "out"
    assert cli(*_args(csv, tiny_model, out), "--shard", "1/2").exit_code == 0
    (out / "p3").mkdir()
    (out / "p3" / CLAIM_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "t": 9e18}))
    res = cli("report", out)
    assert res.exit_code == 0
    assert "2 ok" in res.stderr and "2 missing (1 being computed) of 4 items" in res.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["missing"] == ["p2", "p3"] and rep["in_progress"] == ["p3"]


def test_report_of_a_folder_without_journal_is_a_one_line_error(cli, tmp_path):
    res = cli("report", tmp_path)
    assert res.exit_code == 1 and "no item journal" in res.stderr and res.stderr.count("\n") == 1


def test_cut_journal_lines_are_skipped_and_the_latest_record_wins(tmp_path):
    (tmp_path / JOURNAL_DIR).mkdir()
    (tmp_path / JOURNAL_DIR / "a.jsonl").write_text(
        json.dumps({"name": "x", "status": "error", "journal_t": 1}) + "\n" + '{"name": "y", "sta')
    (tmp_path / JOURNAL_DIR / "b.jsonl").write_text(json.dumps({"name": "x", "status": "ok", "journal_t": 2}) + "\n")
    items, missing = merged(tmp_path, ["x", "y"])
    assert items == [{"name": "x", "status": "ok"}] and missing == ["y"]


def test_claims_are_exclusive_and_stale_ones_are_taken_over(tmp_path):
    import socket

    folder = tmp_path / "item"
    assert claim(folder) is None and claim(folder) is None  # this process's own claim
    (folder / CLAIM_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid() + 10 ** 6, "t": 0}))
    assert claim(folder) is None  # a dead process on this host: taken over
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (folder / CLAIM_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": live.pid, "t": 0}))
        assert claim(folder) == f"{socket.gethostname()} pid {live.pid}"
    finally:
        live.kill()
    (folder / CLAIM_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 5, "t": 0}))
    assert claim(folder) is None  # another host's, hours old
    release(folder)
    assert not (folder / CLAIM_FILE).exists()


def test_shard_values_are_checked(cli, tiny_model, tmp_path):
    csv = _csv(tmp_path / "in", 2)
    for bad, message in (("0/3", "I must be between 1 and N"), ("2", "give I/N"), ("4/3", "between 1 and N")):
        res = cli(*_args(csv, tiny_model, tmp_path / "o"), "--shard", bad)
        assert res.exit_code == 2 and message in res.stderr, res.stderr
    res = cli("edit", tmp_path / "in" / "p0.png", "-p", "x", "-m", tiny_model, "--shard", "1/2", "-o", tmp_path / "o")
    assert res.exit_code == 2 and "--shard takes a share of --batch rows" in res.stderr
