"""``report.html``: a self-contained, offline inspection report of a predict (or test) run.

Written by :class:`~crackseg.callbacks.PredictionWriter` beside its outputs: a summary (images, flagged images,
cracks, total crack length, thresholds, model and checkpoint), a histogram of image scores (inline SVG) and a
gallery of overlay thumbnails that open the full-size overlay, with per-image score, label, cracks, length and
widths (px and mm), sortable by any column and filterable (flagged only, least score). Test reports add the
ground-truth thumbnail and the per-image F1. Images are relative links into the output folder; no script, font
or style is fetched from anywhere (hand-written: no library writes such a report without a server or CDN).
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ReportImage", "write_report"]


@dataclass
class ReportImage:
    """What the report shows of one image (aggregated from its record)."""

    name: str
    source: str
    score: float
    flagged: bool
    cracks: int | None = None
    length_px: float = 0.0
    max_width_px: float = 0.0
    mean_width_px: float = 0.0
    length_mm: float | None = None
    max_width_mm: float | None = None
    mean_width_mm: float | None = None
    f1: float | None = None
    links: dict[str, str] = field(default_factory=dict)  # "overlay" / "mask" / "thumb" / "truth" → relative path

    @classmethod
    def from_record(cls, record: dict[str, Any], links: dict[str, str]) -> ReportImage:
        """Aggregate a writer record (``row`` + ``cracks``): total length, largest and length-weighted mean width."""
        row, cracks = record["row"], record.get("cracks") or []
        length = sum(float(c["length_px"]) for c in cracks)
        image = cls(name=row["name"], source=row["source"], score=float(row["score"]),
                    flagged=bool(int(row["predicted_label"])), cracks=row.get("cracks"), length_px=length,
                    max_width_px=max((float(c["max_width_px"]) for c in cracks), default=0.0),
                    mean_width_px=_weighted_mean(cracks, "mean_width_px"), f1=row.get("f1"), links=links)
        if cracks and "length_mm" in cracks[0]:
            image.length_mm = sum(float(c["length_mm"]) for c in cracks)
            image.max_width_mm = max(float(c["max_width_mm"]) for c in cracks)
            image.mean_width_mm = _weighted_mean(cracks, "mean_width_mm")
        return image


def _weighted_mean(cracks: Sequence[dict[str, Any]], key: str) -> float:
    """Mean of ``key`` over the cracks weighted by their skeleton length (a long crack counts more)."""
    weights = [float(c["length_px"]) for c in cracks]
    total = sum(weights)
    if not cracks or total <= 0:
        return 0.0
    return sum(w * float(c[key]) for w, c in zip(weights, cracks, strict=True)) / total


def _histogram_svg(scores: Sequence[float], threshold: float, bins: int = 30, width: int = 640,
                   height: int = 160) -> str:
    """An inline SVG histogram of the image scores with the image threshold drawn as a red line."""
    finite = [s for s in scores if math.isfinite(s)]
    if not finite:
        return "<p>No finite image score.</p>"
    lo, hi = min(finite + [threshold]), max(finite + [threshold])
    if hi <= lo:
        hi = lo + 1.0
    counts = [0] * bins
    for s in finite:
        counts[min(bins - 1, int((s - lo) / (hi - lo) * bins))] += 1
    peak = max(counts)
    pad, bar = 24, (width - 2 * 24) / bins
    rects = []
    for i, count in enumerate(counts):
        h = (height - 2 * pad) * count / peak
        x0 = lo + (hi - lo) * i / bins
        rects.append(f'<rect x="{pad + i * bar:.1f}" y="{height - pad - h:.1f}" width="{max(bar - 1, 1):.1f}" '
                     f'height="{h:.1f}"><title>{count} image(s), score {x0:.4g}–{x0 + (hi - lo) / bins:.4g}'
                     "</title></rect>")
    tx = pad + (threshold - lo) / (hi - lo) * (width - 2 * pad)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="histogram of image scores">{"".join(rects)}'
            f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{pad / 2}" y2="{height - pad}" class="thr"/>'
            f'<text x="{tx + 4:.1f}" y="{pad}" class="thr">threshold {threshold:.4g}</text>'
            f'<text x="{pad}" y="{height - 6}">{lo:.4g}</text>'
            f'<text x="{width - pad}" y="{height - 6}" text-anchor="end">{hi:.4g}</text>'
            f'<text x="{width - pad}" y="{pad - 8}" text-anchor="end">tallest bar: {peak} image(s)</text></svg>')


def _cell(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return '<td data-v="">–</td>'
    return f'<td data-v="{float(value):.6g}">{float(value):.{digits}f}</td>'


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}
th{cursor:pointer;background:#f3f3f3;position:sticky;top:0}td.l,th.l{text-align:left}
.summary td{text-align:left}img{max-width:160px;max-height:120px;display:block}
tr.flagged td.name{color:#b00;font-weight:600}svg rect{fill:#4a78b0}svg .thr{stroke:#c00;fill:#c00}
svg text{font-size:11px}#controls{margin:.6em 0}
"""

_SCRIPT = """
const body=document.querySelector('#gallery tbody');
let dir={};
document.querySelectorAll('#gallery th[data-col]').forEach(th=>th.addEventListener('click',()=>{
 const c=+th.dataset.col, d=dir[c]=-(dir[c]||-1), text=th.classList.contains('l');
 const rows=[...body.rows];
 rows.sort((a,b)=>{const x=a.cells[c].dataset.v??a.cells[c].textContent,y=b.cells[c].dataset.v??b.cells[c].textContent;
  if(text)return d*x.localeCompare(y);return d*((x===''?-Infinity:+x)-(y===''?-Infinity:+y));});
 rows.forEach(r=>body.appendChild(r));}));
function filter(){const f=document.getElementById('flagged').checked,
 m=parseFloat(document.getElementById('minscore').value);let n=0;
 for(const r of body.rows){const show=(!f||r.classList.contains('flagged'))&&(isNaN(m)||+r.dataset.score>=m);
  r.style.display=show?'':'none';n+=show;}document.getElementById('shown').textContent=n;}
document.getElementById('flagged').addEventListener('change',filter);
document.getElementById('minscore').addEventListener('input',filter);
document.body.dataset.ready='1';
"""


def write_report(path: Path, images: Sequence[ReportImage], stage: str, summary: dict[str, Any],
                 pixel_threshold: float, image_threshold: float) -> Path:
    """Write ``report.html`` (atomically) for ``images``; ``summary`` holds extra "key: value" lines (model,
    checkpoint, skipped files); links are relative to ``path``'s folder."""
    mm = any(i.length_mm is not None for i in images)
    truth = any("truth" in i.links for i in images)
    total_length = sum(i.length_px for i in images)
    lines = {"stage": stage, "images": len(images), "flagged (score ≥ image threshold)":
             sum(i.flagged for i in images), "cracks": sum(int(i.cracks or 0) for i in images),
             "total crack length": f"{total_length:.1f} px" + (
                 f" ({sum(i.length_mm or 0.0 for i in images):.1f} mm)" if mm else ""),
             "pixel threshold": f"{pixel_threshold:.4g}", "image threshold": f"{image_threshold:.4g}", **summary}
    summary_rows = "".join(f"<tr><th class=l>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                           for k, v in lines.items())
    headers = ["overlay", *(["ground truth"] if truth else []), "image", "score", "flagged", "cracks",
               "length px", "max width px", "mean width px",
               *(["length mm", "max width mm", "mean width mm"] if mm else []), *(["F1"] if truth else [])]
    text_columns = {"image"}
    head = "".join(f'<th data-col="{i}" class="{"l" if h in text_columns else ""}">{html.escape(h)}</th>'
                   if h not in ("overlay", "ground truth") else f"<th>{h}</th>" for i, h in enumerate(headers))
    rows = []
    for image in images:
        thumb, full = image.links.get("thumb"), image.links.get("overlay") or image.links.get("mask")
        picture = (f'<a href="{html.escape(full)}"><img src="{html.escape(thumb or full)}" loading="lazy" '
                   f'alt="{html.escape(image.name)}"></a>' if full else "")
        cells = [f"<td>{picture}</td>"]
        if truth:
            link = image.links.get("truth")
            cells.append(f'<td><a href="{html.escape(link)}"><img src="{html.escape(link)}" loading="lazy" '
                         'alt="ground truth"></a></td>' if link else "<td></td>")
        cells += [f'<td class="l name" data-v="{html.escape(image.name)}" title="{html.escape(image.source)}">'
                  f"{html.escape(image.name)}</td>", _cell(image.score, 4),
                  f'<td data-v="{int(image.flagged)}">{"yes" if image.flagged else "no"}</td>',
                  _cell(image.cracks, 0), _cell(image.length_px), _cell(image.max_width_px),
                  _cell(image.mean_width_px)]
        if mm:
            cells += [_cell(image.length_mm, 2), _cell(image.max_width_mm, 2), _cell(image.mean_width_mm, 2)]
        if truth:
            cells.append(_cell(image.f1, 3))
        rows.append(f'<tr class="{"flagged" if image.flagged else ""}" data-score="{image.score:.6g}">'
                    f'{"".join(cells)}</tr>')
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>crackseg {stage} report</title><style>{_STYLE}</style></head>
<body><h1>crackseg {html.escape(stage)} report</h1>
<table class="summary">{summary_rows}</table>
<h2>Image scores</h2>{_histogram_svg([i.score for i in images], image_threshold)}
<h2>Images</h2>
<div id="controls"><label><input type="checkbox" id="flagged"> flagged only</label>
 <label>score ≥ <input type="number" id="minscore" step="any"></label>
 <span><span id="shown">{len(images)}</span> shown; click a column to sort</span></div>
<table id="gallery"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>
<script>{_SCRIPT}</script></body></html>
"""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(document, encoding="utf-8")
    os.replace(tmp, path)
    return path
