from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import template

from core.door import display_json

register = template.Library()


@register.filter
def thousands(value: Any) -> str:
    """12345 -> '12,345' (no locale, no humanize app needed)."""
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return "" if value is None else str(value)


@register.filter
def pretty_json(value: Any) -> str:
    return display_json(value, indent=2)


@register.filter
def epoch_ms(value: Any) -> str:
    """Epoch milliseconds as a UTC time: 1700000000000 -> '2023-11-14 22:13:20.000'."""

    try:
        moment = datetime.fromtimestamp(int(value) / 1000, tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return str(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
