"""The DATAGATE knobs: defaults, environment overrides and start-up checks."""

from __future__ import annotations

import pytest
from django.test import override_settings

from datagate_site.checks import datagate_settings_check
from datagate_site.knobs import KNOBS, knobs_from_environment


def test_defaults_apply_without_environment() -> None:
    values = knobs_from_environment({})
    assert values["CHUNK_SIZE"] == 500
    assert values["FEED_WINDOW"] == 64
    assert values["MAX_FRAME_BYTES"] == 1024 * 1024
    assert set(values) == {k.name for k in KNOBS}


def test_environment_overrides_each_knob_with_its_type() -> None:
    values = knobs_from_environment(
        {
            "DATAGATE_CHUNK_SIZE": "50",
            "DATAGATE_AUTO_CREATE_COLLECTIONS": "false",
            "DATAGATE_CONNECT_TIMEOUT": "2.5",
        }
    )
    assert values["CHUNK_SIZE"] == 50
    assert values["AUTO_CREATE_COLLECTIONS"] is False
    assert values["CONNECT_TIMEOUT"] == 2.5


@pytest.mark.parametrize(
    ("name", "raw"), [("CHUNK_SIZE", "many"), ("AUTO_CREATE_COLLECTIONS", "maybe")]
)
def test_a_malformed_override_names_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ValueError, match=f"DATAGATE_{name}"):
        knobs_from_environment({f"DATAGATE_{name}": raw})


def test_the_system_check_refuses_nonsense_and_warns_about_the_memory_layer(settings) -> None:
    bad = dict(settings.DATAGATE, FEED_WINDOW=0)
    with override_settings(DATAGATE=bad, DEBUG=False):
        ids = {m.id for m in datagate_settings_check()}
    assert "datagate.E001" in ids
    assert "datagate.W002" in ids


@pytest.mark.parametrize("value", [-0.01, 1.5])
def test_the_system_check_bounds_live_coalescing(settings, value: float) -> None:
    bad = dict(settings.DATAGATE, LIVE_COALESCE_MAX=value)
    with override_settings(DATAGATE=bad):
        ids = {m.id for m in datagate_settings_check()}
    assert "datagate.E006" in ids


def test_live_coalescing_may_be_switched_off(settings) -> None:
    off = dict(settings.DATAGATE, LIVE_COALESCE_MAX=0.0)
    with override_settings(DATAGATE=off):
        ids = {m.id for m in datagate_settings_check()}
    assert "datagate.E006" not in ids
