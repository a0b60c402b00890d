"""OUT/report.html (cfgen/viz/html.py): self-contained, every item in the table, failures listed,
and the table sorts in a real browser (headless chromium, when installed)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls, self.rows, self.imgs, self.in_items, self.cells = [], [], 0, False, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if key in a:
                self.urls.append(a[key])
        if tag == "img":
            self.imgs += 1
        if tag == "table" and a.get("id") == "items":
            self.in_items = True
        if tag == "tr" and self.in_items:
            self.cells = []
        if tag == "td" and self.in_items and self.cells is not None:
            self.cells.append("")

    def handle_data(self, data):
        if self.in_items and self.cells:
            self.cells[-1] += data

    def handle_endtag(self, tag):
        if tag == "tr" and self.in_items and self.cells:
            self.rows.append(self.cells)
            self.cells = None
        if tag == "table":
            self.in_items = False


@pytest.fixture
def edit_run(cli, tiny_model, tmp_path) -> Path:
    rows = ["image,prompt,seed"]
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).uniform(0, 255, (32, 32)).astype(np.uint8)).save(tmp_path / f"s{i}.png")
        rows.append(f"s{i}.png,Chest X-ray showing Cardiomegaly,{i}")
    rows.append("missing.png,Chest X-ray,0")
    (tmp_path / "jobs.csv").write_text("\n".join(rows) + "\n")
    res = cli("edit", "--batch", tmp_path / "jobs.csv", "-m", tiny_model, "--steps", "2", "-o", tmp_path / "out", "-q")
    assert res.exit_code == 1  # the missing row
    return tmp_path / "out"


def test_html_report_is_self_contained_and_lists_every_item(edit_run):
    text = (edit_run / "report.html").read_text()
    page = _Page()
    page.feed(text)
    assert page.urls and all(u.startswith("data:image/png;base64,") for u in page.urls)  # nothing to fetch
    assert not re.search(r"https?://", text)
    rep = json.loads((edit_run / "report.json").read_text())
    assert [r[0] for r in page.rows] == [it["name"] for it in rep["items"]]
    assert page.imgs == 3  # one panel per finished item
    assert "Failed items (1)" in text and "missing.png: file not found" in text


def test_html_table_sorts_in_a_headless_browser(edit_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium (Debian package chromium) on this machine")
    rep = json.loads((edit_run / "report.json").read_text())
    ok = [it for it in rep["items"] if it["status"] == "ok"]
    page = (edit_run / "report.html").read_text()
    # click the l1 header twice (descending), then write the row order where --dump-dom shows it
    probe = ("<script>window.onload=()=>{const th=[...document.querySelectorAll('#items th')]"
             ".find(h=>h.textContent==='l1');sortBy(th);sortBy(th);document.body.setAttribute('data-order',"
             "[...document.querySelectorAll('#items tbody tr')].map(r=>r.cells[0].textContent).join(','))}</script>")
    test_page = tmp_path / "probe.html"
    test_page.write_text(page.replace("</body>", probe + "</body>"))
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", test_page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    order = re.search(r'data-order="([^"]*)"', dom).group(1).split(",")
    want = [it["name"] for it in sorted(ok, key=lambda it: -it["metrics"]["l1"])]
    assert order[:len(want)] == want
