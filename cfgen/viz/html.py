"""``OUT/report.html``: a self-contained review page of a run (no network, no CDN: images are
embedded, the table sorts with a few lines of inline script).

Sections: the run (command, model, parameters), the summary with 95% intervals, a gallery of
up to MAX_GALLERY items (each item's panel.png, or evaluate's examples), the per-item metrics
table (every item, sortable by any column), and the failed items with their errors.
"""
from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

from cfgen.io.atomic import write_atomic

MAX_GALLERY = 60
MAX_IMAGE_BYTES = 2 * 1024 * 1024

_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{cursor:pointer;background:#eee}
td:first-child,th:first-child{text-align:left}.gallery figure{display:inline-block;margin:6px;vertical-align:top}
.gallery img{max-width:720px;border:1px solid #ccc}figcaption{font-size:12px;max-width:720px}
.error{color:#a00}pre{background:#f6f6f6;padding:6px;font-size:12px;overflow-x:auto}"""

_SCRIPT = """function sortBy(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th);
const rows=[...t.tBodies[0].rows],asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
const key=r=>{const v=r.cells[i].dataset.v??r.cells[i].textContent;const n=parseFloat(v);return isNaN(n)?v:n};
rows.sort((a,b)=>{const x=key(a),y=key(b);return (x>y?1:x<y?-1:0)*(asc?1:-1)});
rows.forEach(r=>t.tBodies[0].appendChild(r))}"""


#: figure formats a page can show inline (--figure-format pdf: a link to the file beside the page)
_MIME = {".png": "image/png", ".svg": "image/svg+xml"}


def _img(path: Path, page_dir: Path | None = None) -> str:
    if not path.is_file():
        return ""
    mime = _MIME.get(path.suffix.lower())
    if mime is None or path.stat().st_size > MAX_IMAGE_BYTES:
        href = Path(os.path.relpath(path, page_dir)).as_posix() if page_dir is not None else path.name
        return f'<a href="{html.escape(href)}">{html.escape(path.name)}</a>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.name)}" src="data:{mime};base64,{data}">'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape("" if v is None else str(v))


def _summary(data: dict) -> str:
    s = data.get("summary") or {}
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v.get('mean'))}</td><td>{_fmt(v.get('std'))}</td>"
                   f"<td>{_fmt((v.get('ci95') or [None, None])[0])} .. {_fmt((v.get('ci95') or [None, None])[1])}</td>"
                   f"<td>{v.get('n')}</td></tr>" for k, v in (s.get("metrics") or {}).items())
    counts = ", ".join(f"{s.get(k, 0)} {k}" for k in ("ok", "skipped", "error"))
    missing = data.get("missing") or []
    more = f"; {len(missing)} not finished" if missing else ""
    return (f"<h2>Summary</h2><p>{counts}{more}</p><table><thead><tr><th>metric</th><th>mean</th><th>std</th>"
            f"<th>95% interval</th><th>n</th></tr></thead><tbody>{rows}</tbody></table>")


def _items_table(items: list[dict]) -> str:
    metrics = sorted({k for it in items for k, v in (it.get("metrics") or {}).items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)})
    head = "".join(f'<th onclick="sortBy(this)">{html.escape(c)}</th>' for c in ["name", "status", *metrics])
    body = []
    for it in items:
        m = it.get("metrics") or {}
        cells = [f"<td>{_fmt(it.get('name'))}</td>", f"<td>{_fmt(it.get('status'))}</td>"]
        cells += [f'<td data-v="{m[k]}">{_fmt(m[k])}</td>' if isinstance(m.get(k), (int, float)) else "<td></td>"
                  for k in metrics]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<h2>Items</h2><p>Click a column to sort.</p><table id=\"items\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _gallery(items: list[dict], out_dir: Path, extra: list[Path]) -> str:
    figs = [f"<figure>{_img(p, out_dir)}<figcaption>{html.escape(p.name)}</figcaption></figure>" for p in extra if p.is_file()]
    shown = [it for it in items if it.get("status") in ("ok", "skipped")][:MAX_GALLERY]
    for it in shown:
        outputs = it.get("outputs") or {}
        panel = outputs.get("panel") or outputs.get("preview")  # edit/invert; synth3d
        if panel:
            p = (it.get("params") or {})
            caption = it.get("name") or ""
            if p.get("prompt") or p.get("source_prompt"):
                caption += f": '{p.get('source_prompt', '')}' -> '{p.get('prompt', '')}'"
            figs.append(f"<figure>{_img(out_dir / panel, out_dir)}<figcaption>{html.escape(caption)}</figcaption></figure>")
    note = f"<p>The first {MAX_GALLERY} items.</p>" if len(shown) == MAX_GALLERY else ""
    return f'<h2>Gallery</h2>{note}<div class="gallery">{"".join(figs)}</div>' if figs else ""


def _failed(items: list[dict]) -> str:
    bad = [it for it in items if it.get("status") == "error"]
    if not bad:
        return ""
    rows = "".join(f'<tr><td>{_fmt(it.get("name"))}</td><td class="error">{_fmt(it.get("error"))}</td></tr>'
                   for it in bad)
    return f"<h2>Failed items ({len(bad)})</h2><table><tbody>{rows}</tbody></table>"


def write_html_report(data: dict, out_dir: Path, extra_images: list[Path] | None = None) -> Path:
    """OUT/report.html from a run report's data (written atomically)."""
    out_dir = Path(out_dir)
    items = data.get("items") or []
    model = data.get("model") or {}
    run = {"command": data.get("command"), "created": data.get("created"), "device": data.get("device"),
           "model": model.get("name") if isinstance(model, dict) else model,
           "cfgen_version": data.get("cfgen_version")}
    params = json.dumps(data.get("params") or {}, indent=1, default=str)
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>cfgen {_fmt(run['command'])} report</title>"
            f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>"
            f"<h1>cfgen {_fmt(run['command'])}</h1><p>{' · '.join(f'{k}: {_fmt(v)}' for k, v in run.items())}</p>"
            f"<details><summary>parameters</summary><pre>{html.escape(params)}</pre></details>"
            f"{_summary(data)}{_gallery(items, out_dir, extra_images or [])}{_items_table(items)}{_failed(items)}"
            "</body></html>")
    # file names that are not UTF-8 (surrogate escapes) are shown escaped, as report.json shows them
    return write_atomic(out_dir / "report.html", lambda p: p.write_text(page, encoding="utf-8", errors="backslashreplace"))
