"""`python -m bench.profile_summary`: a py-spy raw profile summed by step of the connect path."""

from __future__ import annotations

from collections import Counter

from bench.profile_summary import markdown, summarize


def test_steps_are_inclusive_shares_of_busy_samples_and_idle_is_left_out() -> None:
    stacks = Counter(
        {
            "run (a.py:1);session_open (replication/services.py:1);"
            "token_authenticate (accounts/tokens.py:43);execute (django/db/backends/utils.py:1)": 3,
            "run (a.py:1);session_open (replication/services.py:1);"
            "document_policy (accounts/access.py:291);get_perms (guardian/core.py:151)": 1,
            "run (a.py:1);onMessage (autobahn/websocket/protocol.py:1)": 4,
            "run (a.py:1);select (selectors.py:451)": 12,
        }
    )
    summary = summarize(stacks)
    assert summary["samples"] == 20
    assert summary["busy_samples"] == 8
    steps = summary["steps_percent_of_busy"]
    assert isinstance(steps, dict)
    assert steps["session_open (all of the Connect's checks)"] == 50.0
    assert steps["token check"] == 37.5
    assert steps["access compilation (collection read/write/create, document policy)"] == 12.5
    assert steps["replica upsert"] == 0.0
    layers = summary["layers_percent_of_busy"]
    assert isinstance(layers, dict)
    assert layers["autobahn (websocket framing, handshake)"] == 50.0
    assert layers["Django ORM and SQL compiler"] == 37.5
    assert "| token check | 37.5 |" in markdown(summary, "x")
