"""An HTML report of a run's output folder: the maps, the metrics table, the curves and the settings.

``inputiba report OUTDIR`` (or :func:`write_report`) reads what a run left in
its folder and writes ``OUTDIR/report.html`` (and ``report-2.html``, ... for
large runs):

- the figures of ``vision/attribute.py`` and ``inputiba demo`` (one ``.png``
  beside each ``.npz``: the image, IBA's bits, ``lambda_G``, the InputIBA
  mask) with each input's path and target, ``page_size`` inputs per page,
  loaded lazily and linked, never embedded, so a run of thousands of images
  stays light;
- the metrics table of an evaluation (``results.csv``), sortable by a click
  on a column, and its curve figures;
- the texts of ``nlp/explain.py --json`` files, coloured on one scale with a
  legend;
- the settings of the run (``run.json`` of ``vision/attribute.py``, each
  method's ``settings.json`` of an evaluation) and the versions that made the
  report.

Every name and value is HTML-escaped, file names are URL-quoted, and the page
loads nothing from the network: open it from the folder (it links its images
by relative path).
"""
from __future__ import annotations

import csv
import datetime as _dt
import html
import json
import os
import platform
from pathlib import Path
from urllib.parse import quote

from .io import atomic_path

__all__ = ["write_report"]

_STYLE = ("body{font-family:sans-serif;margin:2em auto;max-width:75em;color:#222}"
          "table{border-collapse:collapse;font-size:90%}th,td{border:1px solid #ccc;padding:3px 6px}"
          "th{background:#eee;cursor:pointer}td.num{text-align:right}"
          "figure{margin:1em 0}figure img{max-width:100%}nav a{margin-right:1em}"
          "pre{background:#f6f6f6;padding:.5em;overflow:auto}")

# Sorts a table by the clicked column (numbers by value, the rest as text); marks the page as ready.
_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var up = th.dataset.order !== 'asc';
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.value || a.cells[col].textContent;
        var y = b.cells[col].dataset.value || b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var d = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
        return up ? d : -d;
      });
      th.dataset.order = up ? 'asc' : 'desc';
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
document.body.dataset.ready = '1';
"""


def write_report(folder: str | os.PathLike, page_size: int = 60, title: str | None = None) -> list[Path]:
    """Write the report of the run in ``folder``; returns the pages written (the first is ``report.html``).

    Raises:
        ValueError: ``folder`` holds nothing a report could show, or ``page_size < 1``.
        FileNotFoundError: ``folder`` does not exist.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no run folder at {root}")
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, got {page_size}")
    maps = _map_entries(root)
    sections = [s for s in (_metrics_section(root), _token_section(root), _settings_section(root)) if s]
    if not maps and not sections:
        raise ValueError(f"{root} holds no maps (.npz with a .png), no results.csv and no explain.py JSON "
                         "to report on")
    title = title or f"inputiba report: {root.resolve().name}"
    pages = max(1, -(-len(maps) // page_size))
    names = ["report.html"] + [f"report-{k}.html" for k in range(2, pages + 1)]
    written = []
    for k, name in enumerate(names):
        chunk = maps[k * page_size:(k + 1) * page_size]
        body = [f"<h1>{html.escape(title)}</h1>", _versions()]
        if pages > 1:
            body.append(_nav(names, k))
        if k == 0:
            body += sections
        if chunk:
            first = k * page_size + 1
            body.append(f"<h2>Maps {first}–{first + len(chunk) - 1} of {len(maps)}</h2>")
            body += [_figure(rel, target) for rel, target in chunk]
        if pages > 1:
            body.append(_nav(names, k))
        page = ("<!DOCTYPE html>\n<html><head><meta charset=utf-8>"
                f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
                + "\n".join(body) + f"\n<script>{_SCRIPT}</script>\n</body></html>\n")
        path = root / name
        with atomic_path(path, suffix=".html") as tmp:
            Path(tmp).write_text(page, encoding="utf-8")
        written.append(path)
    return written


def _map_entries(root: Path) -> list[tuple[str, str]]:
    """``(relative path of the figure, target)`` of every ``.npz`` with a ``.png`` beside it, sorted."""
    import numpy as np

    entries = []
    for npz in sorted(root.rglob("*.npz")):
        rel = npz.relative_to(root)
        png = npz.with_suffix(".png")
        if rel.parts[0] == "samples" or npz.name.startswith(".") or not png.is_file():
            continue  # an evaluation's per-sample curves, or a temporary file
        target = ""
        try:
            with np.load(npz) as data:
                if "target" in data.files:
                    target = str(int(data["target"]))
                if "probability" in data.files:
                    target += f", p = {float(data['probability']):.3f}"
        except (OSError, ValueError):
            target = "unreadable"
        entries.append((png.relative_to(root).as_posix(), target))
    return entries


def _figure(rel: str, target: str) -> str:
    src = html.escape(quote(rel))
    caption = html.escape(rel) + (f" — target {html.escape(target)}" if target else "")
    return (f'<figure><a href="{src}"><img src="{src}" loading="lazy" alt="{html.escape(rel)}"></a>'
            f"<figcaption>{caption}</figcaption></figure>")


def _metrics_section(root: Path) -> str:
    path = root / "results.csv"
    if not path.is_file():
        return ""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return ""
    keys = [c[: -len("_mean")] for c in rows[0] if c.endswith("_mean")]
    head = "<tr><th>method</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>"
    body = []
    for row in rows:
        cells = [f"<td>{html.escape(row['method'])}</td>"]
        for k in keys:
            mean, se, n = row.get(f"{k}_mean", ""), row.get(f"{k}_se", ""), row.get(f"{k}_n", "")
            try:
                value = float(mean)
                text = f"{value:.3f} ± {float(se):.3f} ({n})"
            except ValueError:
                value, text = float("nan"), "–"
            cells.append(f'<td class="num" data-value="{html.escape(repr(value))}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    figures = sorted((root / "figures").glob("*.png")) if (root / "figures").is_dir() else []
    curves = "".join(_figure(p.relative_to(root).as_posix(), "") for p in figures)
    return ("<h2>Metrics</h2><p>Mean ± standard error (samples with a defined score); click a column to "
            f'sort.</p><table class="sortable"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'
            + (f"<h2>Curves</h2>{curves}" if curves else ""))


def _token_section(root: Path) -> str:
    from .text import TokenScores, render_html

    items = []
    for path in sorted(root.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, list) and data and all(isinstance(d, dict) and "tokens" in d and "scores" in d
                                                   for d in data):
            items += [TokenScores(d["tokens"], d["scores"], d.get("label"), d.get("probability")) for d in data]
    if not items:
        return ""
    in_unit = all(0.0 <= s <= 1.0 for it in items for s in it.scores)
    scale = (0.0, 1.0) if in_unit else None
    return "<h2>Texts</h2>" + render_html(items, fragment=True, scale=scale,
                                          unit="mask in [0, 1]" if in_unit else "score")


def _settings_section(root: Path) -> str:
    """The run's settings: ``run.json`` of ``vision/attribute.py``, each method's ``settings.json``."""
    blocks = []
    for path in [root / "run.json", *sorted(root.glob("samples/*/settings.json"))]:
        if not path.is_file():
            continue
        name = "the run" if path.name == "run.json" else path.parent.name
        text = path.read_text(encoding="utf-8")
        blocks.append(f"<details open><summary>{html.escape(name)}</summary>"
                      f"<pre>{html.escape(text)}</pre></details>")
    return "<h2>Settings</h2>" + "".join(blocks) if blocks else ""


def _versions() -> str:
    import torch

    from . import __version__

    made = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    words = (f"made {made} by inputiba {__version__}, torch {torch.__version__}, "
             f"Python {platform.python_version()} on {platform.platform()}")
    return f'<p style="color:#555;font-size:85%">{html.escape(words)}</p>'


def _nav(names: list[str], current: int) -> str:
    links = [f"<b>page {k + 1}</b>" if k == current else f'<a href="{html.escape(quote(n))}">page {k + 1}</a>'
             for k, n in enumerate(names)]
    return "<nav>" + "".join(links) + "</nav>"
