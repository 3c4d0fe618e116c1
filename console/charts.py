"""Small bar charts as inline SVG, drawn on the server: no JavaScript library, no network.

A chart is a row of bars, one per minute, with the largest value and the time axis labelled.
The output is escaped markup ready to put in a page or to push over the console websocket.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH = 600
HEIGHT = 140
PAD_LEFT = 44
PAD_BOTTOM = 18
PAD_TOP = 8


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}".rstrip("0").rstrip(".") if value else "0"


def bar_chart_svg(
    values: Sequence[float | None],
    *,
    title: str,
    unit: str,
    empty_text: str = "no data in the last hour",
    css_class: str = "chart",
) -> str:
    """Bars for `values` (oldest first; None is a minute without data)."""
    known = [v for v in values if v is not None]
    top = max(known, default=0.0)
    plot_w = WIDTH - PAD_LEFT - 4
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    n = max(len(values), 1)
    step = plot_w / n
    bar_w = max(step - 1.5, 1.0)
    parts = [
        f'<svg class="{escape(css_class)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line class="axis" x1="{PAD_LEFT}" y1="{PAD_TOP + plot_h}" x2="{WIDTH - 4}" '
        f'y2="{PAD_TOP + plot_h}"/>',
        f'<text class="label" x="{PAD_LEFT - 4}" y="{PAD_TOP + 8}" text-anchor="end">'
        f"{escape(_fmt(top))}</text>",
        f'<text class="label" x="{PAD_LEFT - 4}" y="{PAD_TOP + plot_h}" text-anchor="end">0</text>',
        f'<text class="label" x="{PAD_LEFT}" y="{HEIGHT - 4}">-{len(values)} min</text>',
        f'<text class="label" x="{WIDTH - 4}" y="{HEIGHT - 4}" text-anchor="end">now</text>',
        f'<text class="label unit" x="{PAD_LEFT + plot_w / 2:.0f}" y="{HEIGHT - 4}" '
        f'text-anchor="middle">{escape(unit)}</text>',
    ]
    if not known or top <= 0:
        parts.append(
            f'<text class="empty" x="{PAD_LEFT + plot_w / 2:.0f}" y="{PAD_TOP + plot_h / 2:.0f}" '
            f'text-anchor="middle">{escape(empty_text)}</text>'
        )
    else:
        for i, value in enumerate(values):
            if not value:
                continue
            h = max(plot_h * value / top, 1.0)
            x = PAD_LEFT + i * step
            y = PAD_TOP + plot_h - h
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}"><title>{escape(_fmt(value))} {escape(unit)}, '
                f"{len(values) - i} min ago</title></rect>"
            )
    parts.append("</svg>")
    return "".join(parts)
