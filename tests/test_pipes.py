"""Clean pipes: stdout carries only a command's data, progress goes to stderr (a terminal here),
`-` reads a CSV from standard input, `python -m cfgen` works."""
from __future__ import annotations

import csv
import io
import json
import os
import pty
import subprocess
import sys


def _under_terminal(command: str, cwd) -> tuple[subprocess.CompletedProcess, str]:
    """Run a shell pipeline with stdout captured and stderr on a pseudo-terminal (so progress bars
    draw, as for a user at a terminal); returns the process and what reached the terminal."""
    master, slave = pty.openpty()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100", "TERM": "xterm"}
    try:
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, stdout=subprocess.PIPE,
                              stderr=slave, stdin=subprocess.DEVNULL, env=env, timeout=600)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    return proc, seen.decode("utf-8", "replace")


def test_caption_piped_into_edit_gives_parseable_csv_and_json(tiny_model, tmp_path):
    from cfgen.phantoms.dataset import write_cxr_dataset

    write_cxr_dataset(tmp_path / "ph", 3, seed=7, size=32, counterfactuals=False, workers=1)
    cfgen = f"{sys.executable} -m cfgen"
    proc, _ = _under_terminal(f"{cfgen} caption labels.csv", tmp_path / "ph")
    assert proc.returncode == 0
    rows = list(csv.DictReader(io.StringIO(proc.stdout.decode())))
    assert len(rows) == 3 and rows[0]["caption"] and rows[0]["Path"].startswith("images/")
    proc, terminal = _under_terminal(
        f"{cfgen} caption labels.csv | {cfgen} edit --batch - -p 'Chest X-ray showing Cardiomegaly' "
        f"-m {tiny_model} -o {tmp_path / 'out'} --steps 2 --json", tmp_path / "ph")
    assert proc.returncode == 0, terminal[-2000:]
    report = json.loads(proc.stdout.decode())  # nothing but the report on stdout
    assert report["summary"]["ok"] == 3 and report["params"]["batch"] == "-"
    assert [it["params"]["source_prompt"] for it in report["items"]] == [r["caption"] for r in rows]
    assert "scans" in terminal  # the progress bar drew on the terminal (stderr)


def test_python_dash_m_cfgen_and_completion():
    proc = subprocess.run([sys.executable, "-m", "cfgen", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("cfgen ")
    proc = subprocess.run([sys.executable, "-m", "cfgen", "--help"], capture_output=True, text=True, timeout=120)
    assert "--install-completion" in proc.stdout


def test_evaluate_reads_pairs_from_stdin(cli, tmp_path, monkeypatch):
    from cfgen.phantoms.dataset import write_cxr_dataset

    write_cxr_dataset(tmp_path / "ph", 2, seed=8, size=32, workers=1)
    with open(tmp_path / "ph" / "edit_jobs.csv", newline="") as fh:
        jobs = list(csv.DictReader(fh))
    text = "name,original,counterfactual\n" + "".join(f"{j['output']},{j['image']},{j['true_counterfactual']}\n"
                                                     for j in jobs)
    monkeypatch.chdir(tmp_path / "ph")  # relative paths on stdin are relative to the working directory
    res = cli("evaluate", "-", "-o", tmp_path / "ev", "-q", "--classifier", "none", "--no-figures", "--json",
              input=text)
    assert res.exit_code == 0, res.stderr[-2000:]
    rep = json.loads(res.stdout)
    assert rep["summary"]["ok"] == len(jobs) and rep["summary"]["metrics"]["l1"]["n"] == len(jobs)
