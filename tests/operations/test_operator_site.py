"""Site-wide endpoints an operator and a browser expect: the favicon."""

from __future__ import annotations

from typing import Any


def test_the_favicon_is_served_so_the_first_page_has_no_browser_error(client: Any) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/x-icon"
    assert b"".join(response.streaming_content)[:4] == b"\x00\x00\x01\x00"
