"""The end-to-end harness itself: a real daphne serves the project on the test database."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest

pytestmark = pytest.mark.e2e


def test_daphne_serves_the_admin_login_page(daphne: Any) -> None:
    with urllib.request.urlopen(f"{daphne.http_url}/admin/login/", timeout=10) as response:
        assert response.status == 200
        assert b"DataGate" in response.read()
