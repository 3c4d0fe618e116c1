"""Start-up checks of the DATAGATE knobs and of the deployment they run in."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register


@register(Tags.compatibility)
def datagate_settings_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    knobs = settings.DATAGATE
    problems: list[CheckMessage] = []
    positive = (
        "CHUNK_SIZE",
        "MAX_FRAME_BYTES",
        "TOMBSTONE_TTL_DAYS",
        "CONNECT_TIMEOUT",
        "FEED_WINDOW",
        "FEED_ACK_TIMEOUT",
        "PULL_CHUNKS_IN_FLIGHT",
        "LIVE_POLL_INTERVAL",
        "ACCESS_TOKEN_TTL",
        "TOPIC_PAGE_SIZE",
        "TOPIC_MAX_PUBLISH",
        "TOPIC_POLL_INTERVAL",
    )
    for name in positive:
        if knobs[name] <= 0:
            problems.append(
                Error(f"DATAGATE {name} must be positive, got {knobs[name]!r}.", id="datagate.E001")
            )
    if knobs["MAX_CLOCK_SKEW_MS"] < 0:
        problems.append(
            Error("DATAGATE MAX_CLOCK_SKEW_MS must not be negative.", id="datagate.E002")
        )
    if knobs["MAINTENANCE_INTERVAL"] < 0:
        problems.append(
            Error("DATAGATE MAINTENANCE_INTERVAL must not be negative.", id="datagate.E003")
        )
    if not 0.0 <= knobs["TOPIC_COMMIT_SHARE"] <= 1.0:
        problems.append(
            Error("DATAGATE TOPIC_COMMIT_SHARE must be between 0 and 1.", id="datagate.E004")
        )
    if knobs["CHUNK_SIZE"] > 5000:
        problems.append(
            Warning(
                "DATAGATE CHUNK_SIZE above 5000 makes pull chunks large frames.", id="datagate.W001"
            )
        )
    layer = str(settings.CHANNEL_LAYERS["default"]["BACKEND"])
    if layer.endswith("InMemoryChannelLayer") and not settings.DEBUG:
        problems.append(
            Warning(
                "The in-memory channel layer serves one process only.",
                hint="Set REDIS_URL to run several daphne processes behind a load balancer.",
                id="datagate.W002",
            )
        )
    return problems
