"""CSV tables (labels, batch jobs): read with clear errors, write atomically or to stdout."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from cfgen.errors import InputError
from cfgen.io.atomic import write_atomic

MAX_TABLE_BYTES = 512 * 1024 * 1024
#: the image column of a table of scans, the first found (CheXpert's is Path)
IMAGE_COLUMNS = ("image", "Path", "path")


def image_column(columns: list[str]) -> str | None:
    return next((c for c in IMAGE_COLUMNS if c in columns), None)


#: "-" names standard input: read once, kept for every later read of the same stream
STDIN = "-"
_stdin_read: tuple[object, bytes] | None = None  # (the stream, what it held)


def is_stdin(path) -> bool:
    return str(path) == STDIN


def _stdin() -> bytes:
    import sys

    global _stdin_read
    if _stdin_read is None or _stdin_read[0] is not sys.stdin:
        stream = getattr(sys.stdin, "buffer", sys.stdin)
        data = stream.read(MAX_TABLE_BYTES + 1)
        data = data.encode("utf-8") if isinstance(data, str) else data
        if len(data) > MAX_TABLE_BYTES:
            raise InputError(f"{STDIN} (standard input): CSV is larger than {MAX_TABLE_BYTES >> 20} MiB")
        _stdin_read = (sys.stdin, data)
    return _stdin_read[1]


def _table_bytes(path: Path) -> bytes:
    if is_stdin(path):
        return _stdin()
    if not path.is_file():
        raise InputError(f"{path}: CSV file not found")
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise InputError(f"{path}: CSV is larger than {MAX_TABLE_BYTES >> 20} MiB")
    return path.read_bytes()


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows (fully blank lines dropped); every value a stripped string. ``-`` reads
    standard input (relative paths in it are then relative to the working directory)."""
    path = Path(path)
    try:
        text = _table_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}); save the table as UTF-8 CSV") from None
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise InputError(f"{path}: CSV is empty (no header row)")
        columns = [h.strip() for h in header]
        dupes = sorted({c for c in columns if columns.count(c) > 1 and c})
        if dupes:
            raise InputError(f"{path}: duplicate column(s) {', '.join(dupes)}")
        rows = []
        for rec in reader:
            if not any(v.strip() for v in rec):
                continue
            if len(rec) > len(columns):
                raise InputError(f"{path} line {reader.line_num}: {len(rec)} fields but the header has {len(columns)}")
            rows.append({c: (rec[i].strip() if i < len(rec) else "") for i, c in enumerate(columns)})
    except csv.Error as exc:
        raise InputError(f"{path}: malformed CSV ({exc})") from None
    return columns, rows


def format_csv(columns: list[str], rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_csv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> Path:
    text = format_csv(columns, rows)
    return write_atomic(Path(path), lambda p: p.write_text(text, encoding="utf-8"))
