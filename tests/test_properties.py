"""Property-based tests: random bytes and random tables never crash cfgen with anything but
its own error (CfgenError subclasses, which the CLI turns into one line and an exit code)."""
from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfgen.captions.templates import UncertainPolicy, caption_rows
from cfgen.errors import CfgenError
from cfgen.io.scan import read_scan
from cfgen.io.tables import read_csv

SUFFIXES = [".png", ".jpg", ".tif", ".dcm", ".nii", ".nii.gz", ""]
PNG_HEAD = b"\x89PNG\r\n\x1a\n"
DICM = b"\x00" * 128 + b"DICM"
settings.register_profile("cfgen", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("cfgen")


@given(suffix=st.sampled_from(SUFFIXES), head=st.sampled_from([b"", PNG_HEAD, DICM, b"\x1f\x8b"]),
       body=st.binary(max_size=2048))
def test_random_bytes_never_crash_the_readers(suffix, head, body):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"scan{suffix}"
        path.write_bytes(head + body)
        try:
            scan = read_scan(path)
        except CfgenError as exc:
            assert str(path) in str(exc)
        else:  # some random bytes are valid images; then they must be well-formed
            assert scan.pixels.ndim in (3, 4) and scan.pixels.dtype.name == "float32"


cell = st.one_of(st.sampled_from(["1", "1.0", "0", "0.0", "-1", "-1.0", "", "nan", "yes"]),
                 st.text(max_size=12))
headers = st.lists(st.sampled_from(["Path", "No Finding", "Cardiomegaly", "Pleural Effusion", "Support Devices",
                                    "Age", "Sex", "diagnosis", "lesion_load", "x,y", "caption", ""]),
                   min_size=1, max_size=7, unique=True)


@given(cols=headers, data=st.data(), template=st.sampled_from(["chexpert", "brain", "{Age} {Sex}", "{nope}"]),
       uncertain=st.sampled_from(list(UncertainPolicy)))
def test_random_tables_never_crash_captioning(cols, data, template, uncertain):
    rows = data.draw(st.lists(st.lists(cell, min_size=len(cols), max_size=len(cols)), max_size=5))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    w.writerows(rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.csv"
        path.write_text(buf.getvalue(), encoding="utf-8")
        try:
            columns, table = read_csv(path)
            captions = caption_rows(table, columns, template, str(path), uncertain)
        except CfgenError as exc:
            assert "\n" not in str(exc)
        else:
            assert len(captions) == len(table) and all(isinstance(c, str) and c for c in captions)


@given(raw=st.binary(max_size=600))
def test_random_csv_bytes_never_crash_the_table_reader(raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.csv"
        path.write_bytes(raw)
        try:
            columns, rows = read_csv(path)
        except CfgenError:
            return
        assert all(set(r) == set(columns) for r in rows)
