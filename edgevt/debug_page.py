"""The HTML page of an `edgevt debug` result: SQNR along the network's depth, the file against
fp32 and against edgevt's simulation, departures marked, and the tables. One self-contained
file (inline SVG, no scripts), like the report."""

from __future__ import annotations

import html
from typing import Any

from edgevt.debug import FAITHFUL_COSINE, DebugResult, format_table

_CAP_DB = 80.0  # an exact match (no noise) is drawn at the top of the chart


def sqnr_svg(result: DebugResult, width: int = 900, height: int = 360) -> str:
    """Per-tensor SQNR in depth order: vs fp32 (where int8 noise enters and grows) and vs the
    simulation end to end (drift); red rings: departures from the simulation."""
    tensors = result.tensors
    if not tensors:
        return "<p><em>No tensor was compared.</em></p>"
    left, right, top, bottom = 60, 20, 20, 60
    n = len(tensors)

    def value(v: float | None) -> float:
        return _CAP_DB if v is None else max(0.0, min(v, _CAP_DB))

    def sx(i: int) -> float:
        return left + (i / max(n - 1, 1)) * (width - left - right)

    def sy(db: float) -> float:
        return height - bottom - db / _CAP_DB * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="SQNR along the depth">',
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
        'stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#333"/>',
    ]
    for db in range(0, int(_CAP_DB) + 1, 20):
        parts.append(f'<text x="{left - 6}" y="{sy(db) + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{db}</text>')  # fmt: skip
    parts.append(f'<text x="14" y="{(top + height - bottom) / 2}" font-size="12" '
                 f'text-anchor="middle" transform="rotate(-90 14 {(top + height - bottom) / 2})"'
                 f'>SQNR dB (top: exact)</text>')  # fmt: skip
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 20}" font-size="12" '
                 'text-anchor="middle">tensors in the order the network computes them</text>')
    series = (("#1f77b4", "vs fp32", lambda t: t.sqnr_fp32_db),
              ("#ff7f0e", "vs simulation, end to end", lambda t: t.sqnr_sim_db))  # fmt: skip
    for k, (color, label, get) in enumerate(series):
        path = " ".join(f"{sx(i):.1f},{sy(value(get(t))):.1f}" for i, t in enumerate(tensors))
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                     'stroke-width="1.5"/>')  # fmt: skip
        y = height - 8
        parts.append(f'<rect x="{left + 220 * k}" y="{y - 9}" width="14" height="3" '
                     f'fill="{color}"/><text x="{left + 220 * k + 20}" y="{y - 4}" '
                     f'font-size="11">{label}</text>')  # fmt: skip
    departed = {d.key for d in result.departures}
    for i, t in enumerate(tensors):
        db = "exact" if t.sqnr_fp32_db is None else f"{t.sqnr_fp32_db:.1f} dB"
        title = html.escape(f"{t.key}: {db}")
        ring = ' stroke="#d62728" stroke-width="2" r="5"' if t.key in departed else ' r="2"'
        parts.append(f'<circle cx="{sx(i):.1f}" cy="{sy(value(t.sqnr_fp32_db)):.1f}" '
                     f'fill="#1f77b4"{ring}><title>{title}</title></circle>')  # fmt: skip
    parts.append("</svg>")
    return "\n".join(parts)


def _bars(rows: list[tuple[str, float]], unit: str, mark: set[str]) -> str:
    """A horizontal bar per (name, value), longest first; ``mark``ed names in red."""
    top = max((v for _, v in rows), default=0.0) or 1.0
    cells = "".join(
        f"<tr><td><code>{html.escape(name)}</code></td><td><div style=\"background:"
        f"{'#d62728' if name in mark else '#1f77b4'};height:10px;"
        f"width:{max(1.0, 300 * value / top):.0f}px\"></div></td><td>{value:.4g} {unit}</td></tr>"
        for name, value in rows
    )
    return f"<table>{cells}</table>"


def bisect_html(result: DebugResult, top: int = 20) -> str:
    """The sensitivity ranking (each op alone in int8) with the float set chosen marked."""
    b = result.bisect
    if not b:
        return ""
    kept = set(b["kept_float"])
    verdict = "met" if b["met"] else "NOT met"
    also = b.get("also_float") or []
    also_text = (f" (the file also keeps {html.escape(', '.join(also))} in float, by the "
                 "target's own rules)" if also else "")  # fmt: skip
    return (
        f"<h2>Which ops to keep in float</h2><p>Goal: {html.escape(b['goal'])}: {verdict} "
        f"with {len(kept)} ops in float{also_text}, measured on exported files "
        f"({b['measured']:.4g}; as exported {b['as_given']:.4g}). Config written: "
        f"<code>{html.escape(b['config'])}</code>.</p><h3>Sensitivity: KL of the logits from "
        "fp32 with only that op in int8 "
        f"(simulation; top {top}, red: kept in float)</h3>"
        + _bars([(op, kl) for op, kl in b["ranking"][:top]], "", kept)
        + "<h3>Order the bisection kept ops in float (simulated KL with it and the ones "
        "before it in float)</h3>"
        + _bars([(op, kl) for op, kl in (b.get("order") or [])[:top]], "", kept)
    )


def render(result: DebugResult, title: str | None = None) -> str:
    title = title or f"edgevt debug: {result.artifact}"
    summary: dict[str, Any] = {
        "model": result.model, "target": result.target, "images": result.images,
        "read by": result.runtime,
        "tensors compared": len(result.tensors),
        f"faithful step by step (cosine >= {FAITHFUL_COSINE})":
            f"{100 * result.faithful_share:.1f} %",
        "departures": len(result.departures), "drifted end to end": len(result.drifted),
        "logits cosine vs fp32": f"{result.logits['cosine_fp32']:.5f}",
        "logits cosine vs simulation": f"{result.logits['cosine_sim']:.5f}",
    }  # fmt: skip
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in summary.items())  # fmt: skip
    departures = "".join(
        f"<li><code>{html.escape(d.key)}</code> (cosine {d.cosine_sim:.6f}): "
        f"{html.escape(d.why)}</li>"
        for d in result.departures
    ) or "<li>none: the file computes every tensor as the simulation does</li>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
pre {{ font-size: 12px; background: #f7f7f7; padding: 8px; overflow-x: auto; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{rows}</table>
<h2>SQNR along the depth</h2>
<figure id="sqnr">{sqnr_svg(result)}
<figcaption>Blue: the file against fp32 (where int8 noise enters and how it grows). Orange: the
file against edgevt's simulation run end to end (drift). Red rings: tensors the file computes
otherwise than the simulation from the same upstream values.</figcaption></figure>
<h2>Departures from the simulation</h2><ul>{departures}</ul>
{bisect_html(result)}
<h2>Every tensor</h2><pre>{html.escape(format_table(result))}</pre>
</body></html>
"""
