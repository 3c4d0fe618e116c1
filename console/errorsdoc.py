"""docs/errors.md rendered for the console, with an anchor per code (`#dg-1001`).

The file is the project's own (trusted) documentation; it is rendered with Python-Markdown and
cached until the file changes.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import markdown
from django.conf import settings
from django.utils.text import slugify

ERRORS_MD = Path(settings.BASE_DIR) / "docs" / "errors.md"
CODE_AT_START = re.compile(r"^(DG-\d{4})\b")

_lock = threading.Lock()
_cache: dict[str, Any] = {"mtime": None, "html": ""}


def code_anchor(code: str) -> str:
    """The anchor of a code's section: `DG-1001` -> `dg-1001`."""
    return code.strip().lower()


def _slug(value: str, separator: str) -> str:
    match = CODE_AT_START.match(value.strip())
    if match:
        return code_anchor(match.group(1))
    return slugify(value) or "section"


def errors_doc_html() -> str:
    """The rendered HTML of docs/errors.md."""
    mtime = ERRORS_MD.stat().st_mtime if ERRORS_MD.exists() else None
    with _lock:
        if _cache["mtime"] != mtime or not _cache["html"]:
            text = ERRORS_MD.read_text(encoding="utf-8") if mtime is not None else ""
            _cache["html"] = markdown.markdown(
                text,
                extensions=["toc", "tables", "fenced_code"],
                extension_configs={"toc": {"slugify": _slug, "permalink": False}},
                output_format="html",
            )
            _cache["mtime"] = mtime
        return str(_cache["html"])
