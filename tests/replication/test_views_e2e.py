"""Partial replication through a data view, end to end: real daphne, real SDK replicas.

A replica on `open-tasks` (`{"status": "open", "owner": "{username}"}`) holds exactly its
user's open tasks; it gains and loses documents live as a full replica of the collection
changes them; what it pushes goes to the collection (and leaves it again when outside the
view); it converges with the full replica on the view's documents (docs/protocol.md
section 12). The CLI's `sync --view` pulls the same set.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from datagate_replica import Replica, SyncError

from accounts.access import System
from replication import data_views
from replication.protocol import mango
from replication.services.documents import document_put
from replication.services.engine import collection_get_or_create
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

CLI = Path(sys.executable).with_name("datagate-replica")
OPEN_TASKS = {"status": "open", "owner": "{username}"}
SYSTEM = System("test")


@pytest.fixture
def tasks(tenant: Any) -> Any:
    found = collection_get_or_create(tenant=tenant, name="tasks")[0]
    seed = {
        "t1": {"status": "open", "owner": "rita", "title": "one"},
        "t2": {"status": "done", "owner": "rita", "title": "two"},
        "t3": {"status": "open", "owner": "wendy", "title": "three"},
        "t4": {"status": "open", "owner": "rita", "title": "four"},
    }
    for doc_id, body in seed.items():
        document_put(actor=SYSTEM, collection_id=found.pk, doc_id=doc_id, body=body, origin="s")
    data_views.view_create(
        actor=SYSTEM,
        tenant=tenant,
        collection_name="tasks",
        name="open-tasks",
        selector=OPEN_TASKS,
    )
    return found


@pytest.fixture
def tokens(member: Any, issue_token: Any, tasks: Any) -> dict[str, str]:
    return {
        "rita": str(issue_token(member("rita", "writer"), "read write")),
        "boss": str(issue_token(member("boss", "writer"), "read write")),
        "admin": str(issue_token(member("ada", "admin"), "read write")),
    }


@pytest.fixture
def replicas(daphne: Any, tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    opened: list[Replica] = []

    def open_replica(name: str, token: str, **options: Any) -> Replica:
        options.setdefault("reply_timeout", 30)
        replica = Replica(
            daphne.ws_url, "acme", "tasks", token, path=tmp_path / f"{name}.sqlite3", **options
        )
        opened.append(replica)
        return replica

    yield open_replica
    for replica in opened:
        replica.close()


def _ids(replica: Replica) -> set[str]:
    return {doc["_id"] for doc in replica.list()}


def _view_of(full: Replica, username: str) -> dict[str, Any]:
    selector = mango.parse(OPEN_TASKS).bind({"username": username, "tenant": "acme"})
    return {d["_id"]: d for d in full.list() if selector.matches(d)}


def test_a_view_replica_holds_its_users_open_tasks_and_follows_them_live(
    replicas: Callable[..., Replica], tokens: dict[str, str], daphne: Any, tmp_path: Path
) -> None:
    mine = replicas("rita-view", tokens["rita"], view="open-tasks")
    full = replicas("boss-full", tokens["boss"])
    mine.sync()
    assert _ids(mine) == {"t1", "t4"}
    assert mine.engine.view == "open-tasks"
    mine.start()
    full.start()
    mine.wait_live(30)
    full.wait_live(30)
    wait_for(lambda: len(_ids(full)) == 4, what="the full replica's pull")

    full.update("t1", {"status": "done"})  # leaves the view: a removal
    wait_for(lambda: "t1" not in _ids(mine), what="t1 to leave the view replica")
    full.update("t2", {"status": "open"})  # enters it
    wait_for(lambda: "t2" in _ids(mine), what="t2 to enter the view replica")
    full.put("t5", {"status": "open", "owner": "rita", "title": "five"})
    full.put("t6", {"status": "open", "owner": "wendy", "title": "six"})
    wait_for(lambda: "t5" in _ids(mine), what="t5 to arrive")
    full.delete("t4")
    wait_for(lambda: "t4" not in _ids(mine), what="t4's delete")

    mine.put("t7", {"status": "open", "owner": "rita", "title": "seven"})  # through the view
    mine.put("t8", {"status": "done", "owner": "rita", "title": "eight"})  # outside it
    wait_for(lambda: {"t7", "t8"} <= _ids(full), what="the view replica's pushes")
    wait_for(lambda: "t8" not in _ids(mine), what="t8 to leave the replica that pushed it")
    wait_for(
        lambda: (
            mine.store.journal_size() == 0
            and {d["_id"]: d for d in mine.list()} == _view_of(full, "rita")
        ),
        what="the view replica to converge with the full one",
    )
    assert _ids(mine) == {"t2", "t5", "t7"}

    # An admin changes the definition: the live session ends, the replica reconnects with its
    # markers and is re-synced by difference (docs/decisions/0016). t3 (wendy's, never sent
    # to this replica) arrives; documents that left as removals (t6) do not come back until
    # they change (a removal stands against the same version: decision 0016).
    epoch = mine.markers.epoch
    request = urllib.request.Request(
        f"{daphne.http_url}/api/v1/tenants/acme/collections/tasks/views/open-tasks/",
        data=json.dumps(
            {"selector": {"$or": [OPEN_TASKS, {"status": "open", "owner": "wendy"}]}}
        ).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {tokens['admin']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read())["version"] == 2
    wait_for(lambda: "t3" in _ids(mine), what="the new definition's documents")
    wait_for(lambda: mine.markers.epoch != epoch, what="the new definition's markers")
    assert "t6" not in _ids(mine)  # left as a removal: it returns with its next change
    mine.stop()

    # The command line: `sync --view` pulls the same set into its own file.
    path = tmp_path / "cli.sqlite3"
    common = ["--url", daphne.ws_url, "--tenant", "acme", "--collection", "tasks"]
    common += ["--token", tokens["rita"], "--file", str(path)]
    done = subprocess.run(
        [str(CLI), *common, "--view", "open-tasks", "sync", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    listed = subprocess.run(
        [str(CLI), *common, "--view", "open-tasks", "ls"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    for doc_id in ("t2", "t3", "t5", "t7"):  # the changed definition's documents
        assert doc_id in listed.stdout
    for doc_id in ("t1", "t8"):
        assert f'"{doc_id}"' not in listed.stdout


def _redefine(daphne: Any, token: str, selector: dict[str, Any]) -> int:
    request = urllib.request.Request(
        f"{daphne.http_url}/api/v1/tenants/acme/collections/tasks/views/open-tasks/",
        data=json.dumps({"selector": selector}).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(json.loads(response.read())["version"])


def test_a_changed_view_re_syncs_its_replicas_by_difference(
    replicas: Callable[..., Replica], tokens: dict[str, str], daphne: Any, tasks: Any
) -> None:
    for i in range(20):  # open tasks of rita that both definitions select
        document_put(
            actor=SYSTEM,
            collection_id=tasks.pk,
            doc_id=f"o{i:02d}",
            body={"status": "open", "owner": "rita", "title": f"o{i}"},
            origin="s",
        )
    offline = replicas("rita-offline", tokens["rita"], view="open-tasks")
    live = replicas("rita-live", tokens["rita"], view="open-tasks")
    old = {"t1", "t4"} | {f"o{i:02d}" for i in range(20)}
    assert offline.sync().pulled == len(old)
    assert live.sync().pulled == len(old)
    live.start()
    live.wait_live(30)
    pulled: list[int] = []  # what each pull of the live replica's sessions received so far
    live.engine.on_progress = lambda count, _total: pulled.append(count)
    epoch = live.markers.epoch

    # The new definition adds wendy's open task t3 and leaves out t4 ("four").
    version = _redefine(
        daphne,
        tokens["admin"],
        {
            "$or": [OPEN_TASKS, {"status": "open", "owner": "wendy"}],
            "title": {"$ne": "four"},
        },
    )
    assert version == 2
    new = (old - {"t4"}) | {"t3"}
    # The live replica: its session ends, it reconnects with its markers, and its pull is the
    # difference (t3 in, t4 out), not the 22 documents of the view.
    wait_for(lambda: _ids(live) == new, what="the live replica to hold the new view")
    wait_for(lambda: live.markers.epoch != epoch, what="the new definition's markers")
    assert pulled, "the reconnected session pulled"
    assert max(pulled) == 2, pulled
    # The offline replica, when it next syncs: the same difference, no reset snapshot.
    report = offline.sync()
    assert not report.reset
    assert report.pulled == 2
    assert _ids(offline) == new
    assert offline.markers.epoch == live.markers.epoch
    # Markers go on from there: the next sync receives nothing.
    assert offline.sync().pulled == 0


def test_a_view_that_does_not_exist_refuses_the_connect(
    replicas: Callable[..., Replica], tokens: dict[str, str]
) -> None:
    with pytest.raises(SyncError) as caught:
        replicas("nope", tokens["rita"], view="nope").sync()
    assert caught.value.code == "DG-4105"
