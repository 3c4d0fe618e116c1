"""The in-server maintenance schedule: started once per process by the first connection."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from accounts.access import System
from replication.maintenance import DAY_MS, maintenance_due, maintenance_scheduled_run
from replication.models import Collection, MaintenanceJob, MaintenanceRun, Tombstone
from replication.scheduler import (
    MaintenanceStarter,
    maintenance_schedule_start,
    maintenance_schedule_stop,
)
from replication.services.engine import batch_apply, now_ms
from tests.support.server_processes import DaphneServer

OLD = now_ms() - 60 * DAY_MS


def old_tombstone(collection: Collection) -> None:
    batch_apply(
        actor=System("test"),
        collection_id=collection.pk,
        feed={"tombstoneMap": {"gone": OLD}},
        origin="r1",
    )


def wait_for(condition: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


@pytest.mark.django_db
def test_a_scheduled_round_runs_each_job_once_per_interval_and_records_it(
    collection: Collection,
) -> None:
    old_tombstone(collection)
    runs = maintenance_scheduled_run(interval_seconds=3600)
    assert [(r.job, r.trigger, r.ok) for r in runs] == [
        ("gc", "schedule", True),
        ("journal_prune", "schedule", True),
    ]
    assert "acme/notes: collected 1 tombstone(s)" in runs[0].summary
    assert runs[0].result["reports"][0]["collected"] == 1
    assert runs[1].summary == "nothing to do in 1 collections"
    assert not maintenance_due(job=MaintenanceJob.GC, interval_seconds=3600)
    assert maintenance_scheduled_run(interval_seconds=3600) == []


def test_the_schedule_is_off_when_the_interval_is_zero(settings: Any) -> None:
    settings.DATAGATE = {**settings.DATAGATE, "MAINTENANCE_INTERVAL": 0.0}
    assert maintenance_schedule_start() is None  # it does not even look for an event loop


async def test_the_first_connection_starts_one_schedule_for_the_process(
    transactional_db: Any, collection: Collection, settings: Any
) -> None:
    settings.DATAGATE = {**settings.DATAGATE, "MAINTENANCE_INTERVAL": 0.3}
    await sync_to_async(old_tombstone)(collection)
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])

    starter = MaintenanceStarter(app)
    try:
        await starter({"type": "http"}, None, None)
        first = maintenance_schedule_start()
        await starter({"type": "websocket"}, None, None)
        assert maintenance_schedule_start() is first is not None
        assert calls == ["http", "websocket"]

        def collected() -> bool:
            return (
                not Tombstone.objects.exists()
                and MaintenanceRun.objects.filter(job="journal_prune").exists()
            )

        deadline = time.monotonic() + 30
        while not await sync_to_async(collected)():
            assert time.monotonic() < deadline, "the schedule did not run"
            await asyncio.sleep(0.1)
        run = await sync_to_async(MaintenanceRun.objects.filter(job="gc").first)()
        assert run is not None
        assert (run.trigger, run.ok) == ("schedule", True)
    finally:
        await maintenance_schedule_stop()


@pytest.mark.e2e
def test_a_real_server_runs_maintenance_on_its_interval(
    transactional_db: Any, collection: Collection, tmp_path: Path
) -> None:
    old_tombstone(collection)
    server = DaphneServer.start(
        tmp_path=tmp_path, extra_env={"DATAGATE_MAINTENANCE_INTERVAL": "0.5"}
    )
    try:
        with urllib.request.urlopen(f"{server.http_url}/admin/login/", timeout=20) as response:
            assert response.status == 200
        wait_for(lambda: MaintenanceRun.objects.filter(job="gc", ok=True).exists())
        wait_for(lambda: not Tombstone.objects.exists())
        collection.refresh_from_db()
        assert collection.purge_seq == 1
        assert MaintenanceRun.objects.filter(job="journal_prune", trigger="schedule").exists()
    finally:
        server.stop()
