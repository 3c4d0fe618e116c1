"""Start-up checks of the DATAGATE knobs and of the deployment they run in."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from datagate_site.knobs import origins_list


@register(Tags.compatibility)
def datagate_settings_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    knobs = settings.DATAGATE
    problems: list[CheckMessage] = []
    positive = (
        "CHUNK_SIZE",
        "MAX_FRAME_BYTES",
        "MAX_DOCUMENT_DEPTH",
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
        "SESSION_RECHECK_INTERVAL",
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
    if knobs["REFRESH_TOKEN_TTL"] < 0:
        problems.append(
            Error("DATAGATE REFRESH_TOKEN_TTL must not be negative.", id="datagate.E005")
        )
    if not 0.0 <= knobs["LIVE_COALESCE_MAX"] <= 1.0:
        problems.append(
            Error("DATAGATE LIVE_COALESCE_MAX must be between 0 and 1 second.", id="datagate.E006")
        )
    if knobs["CHUNK_SIZE"] > 5000:
        problems.append(
            Warning(
                "DATAGATE CHUNK_SIZE above 5000 makes pull chunks large frames.", id="datagate.W001"
            )
        )
    if not re.fullmatch(
        r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)", knobs["API_RATE_LIMIT"]
    ):
        problems.append(
            Error(
                f"DATAGATE API_RATE_LIMIT must look like 600/min, got {knobs['API_RATE_LIMIT']!r}.",
                id="datagate.E091",
            )
        )
    for origin in origins_list(knobs["CORS_ALLOWED_ORIGINS"]):
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            problems.append(
                Error(
                    f"DATAGATE CORS_ALLOWED_ORIGINS entry {origin!r} is not scheme://host[:port].",
                    id="datagate.E092",
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
