"""Range checks without a database: the machine's rules, the SDK's hashes against the server's,
and the property that two stores with random differences end equal in few rounds."""

from __future__ import annotations

import itertools
import math
import os
from typing import Any

import pytest
from datagate_replica import ranges as sdk
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ErrorCode
from replication.protocol import machine as mc
from replication.protocol import messages as m
from replication.protocol import ranges as server
from replication.protocol.markers import Markers

EXAMPLES = int(os.environ.get("DATAGATE_HYPOTHESIS_EXAMPLES", "60"))


def session(capabilities: list[str] | None) -> mc.Session:
    counter = itertools.count(1)
    s = mc.Session(
        tenant="acme",
        collection="notes",
        server_id="server-1",
        new_id=lambda: f"s{next(counter)}",
        clock_ms=lambda: 1,
    )
    body: dict[str, Any] = {"authToken": "t"}
    if capabilities is not None:
        body["capabilities"] = capabilities
    s.receive(message(m.CONNECT, **body))
    return s


def message(message_type: str, **body: Any) -> m.Body:
    header = {"id": f"c-{message_type}", "messageType": message_type, "origin": "r1"}
    return m.parse_decoded({"header": header, **body})


CHECK = {"ranges": [{"lo": 0, "hi": 4096, "count": 1, "hash": "00000000000000ff"}]}


def test_connect_ack_grants_ranges_and_names_the_purge_horizon() -> None:
    s = session(["live", "ranges"])
    (ack,) = s.connect_accepted(
        user_name="ann", read_only=False, end_markers=Markers(9, 7), purge_seq=4
    )
    assert isinstance(ack, mc.Send)
    assert ack.message["capabilities"] == ["live", "ranges"]
    assert ack.message["purgeMarker"] == 4
    (check,) = s.receive(message(m.RANGE_CHECK, **CHECK))
    assert check == mc.CheckRanges(
        (server.Ask(0, 4096, server.Summary(1, 0xFF)),), "c-no2.sync.range.check"
    )
    (fetch,) = s.receive(message(m.RANGE_FETCH, ids=["a"]))
    assert fetch == mc.FetchVersions(("a",), "c-no2.sync.range.fetch")
    (sent,) = s.ranges_answered(body={"markers": {}, "ranges": []}, correlation_id="x")
    assert isinstance(sent, mc.Send)
    assert sent.message["header"]["messageType"] == m.RANGE_RESULT


def test_range_messages_without_the_capability_are_a_protocol_error() -> None:
    s = session(["live"])
    (ack,) = s.connect_accepted(user_name="ann", read_only=False, end_markers=Markers(0, 7))
    assert isinstance(ack, mc.Send)
    assert "purgeMarker" not in ack.message
    error, close = s.receive(message(m.RANGE_CHECK, **CHECK))
    assert isinstance(error, mc.ReportError)
    assert error.error.error is ErrorCode.WRONG_STATE
    assert isinstance(close, mc.Close)
    assert close.code == 4409


def test_a_g3_session_is_never_offered_ranges() -> None:
    s = session(None)
    s.connect_accepted(user_name="ann", read_only=False, end_markers=Markers(0, 7))
    assert not s.ranges
    error, _ = s.receive(message(m.RANGE_CHECK, **CHECK))
    assert isinstance(error, mc.ReportError)
    assert error.error.error is ErrorCode.WRONG_STATE


def test_range_checks_are_bounded_per_session() -> None:
    s = session(["ranges"])
    s.connect_accepted(user_name="ann", read_only=False, end_markers=Markers(0, 7))
    for _ in range(mc.RANGE_CHECKS_MAX):
        assert isinstance(s.receive(message(m.RANGE_CHECK, **CHECK))[0], mc.CheckRanges)
    error, close = s.receive(message(m.RANGE_CHECK, **CHECK))
    assert isinstance(error, mc.ReportError)
    assert error.error.error is ErrorCode.RANGE_ROUNDS
    assert isinstance(close, mc.Close)
    assert close.code == 4409


def test_a_bad_range_is_a_validation_error() -> None:
    for bad in (
        {"lo": 5, "hi": 5, "count": 0, "hash": "0" * 16},
        {"lo": 0, "hi": 4097, "count": 0, "hash": "0" * 16},
        {"lo": 0, "hi": 1, "count": 0, "hash": "xyz"},
    ):
        with pytest.raises(Exception, match="DG-2004"):
            message(m.RANGE_CHECK, ranges=[bad])


@given(
    doc_id=st.text(min_size=1, max_size=40),
    revision=st.integers(1, 2**63 - 1),
    modified=st.integers(0, 2**63 - 1),
    deleted=st.booleans(),
)
def test_the_sdk_hashes_exactly_as_the_server(
    doc_id: str, revision: int, modified: int, deleted: bool
) -> None:
    assert sdk.bucket_of(doc_id) == server.bucket_of(doc_id)
    assert sdk.version_hash(doc_id, revision, modified, deleted) == server.version_hash(
        doc_id, revision, modified, deleted
    )
    if deleted:  # a tombstone's revision is not the replicas' to agree on
        assert server.version_hash(doc_id, revision, modified, True) == server.version_hash(
            doc_id, 1, modified, True
        )


# --- convergence --------------------------------------------------------------------------

Store = dict[str, tuple[int, int, bool]]  # id -> (revision, modified, deleted)


def run_check(theirs: Store, ours: Store) -> tuple[list[sdk.Difference], int]:
    """The range check of docs/protocol.md between two in-memory stores: the server's side
    is replication.protocol.ranges, the replica's the SDK's. Returns (differences, rounds)."""
    table = server.BucketTable.of(server.Header(i, *v) for i, v in theirs.items())
    index = sdk.LocalIndex((i, *v) for i, v in ours.items())
    pending = [(0, server.BUCKETS)]
    differences: list[sdk.Difference] = []
    rounds = 0
    while pending:
        rounds += 1
        asks = []
        for lo, hi in pending[: m.RANGE_CHECK_MAX]:
            asks.append(server.Ask(lo, hi, server.Summary(*index.summary(lo, hi))))
        pending = pending[m.RANGE_CHECK_MAX :]
        for answer in server.answer_plan(table, asks):
            headers = [
                server.Header(i, *v)
                for i, v in sorted(theirs.items())
                if answer.ask.lo <= server.bucket_of(i) < answer.ask.hi
            ]
            wire = server.answer_to_wire(answer, headers)
            lo, hi = answer.ask.lo, answer.ask.hi
            if wire["status"] == server.SPLIT:
                pending += [(p["lo"], p["hi"]) for p in wire["parts"] if index.differs(p)]  # type: ignore[attr-defined]
            elif wire["status"] == server.HEADERS:
                theirs_here = [sdk.Held.from_wire(h) for h in wire["headers"]]  # type: ignore[attr-defined]
                differences += sdk.compare(theirs_here, index.held(lo, hi))
            elif wire["status"] == server.LATER:
                pending.append((lo, hi))
    return differences, rounds


def repair(theirs: Store, ours: Store, differences: list[sdk.Difference]) -> None:
    for difference in differences:
        if difference.kind in (sdk.MISSING, sdk.STALE):
            ours[difference.doc_id] = theirs[difference.doc_id]
        elif difference.kind == sdk.EXTRA:
            del ours[difference.doc_id]
        else:  # NEWER: pushed, and the server takes it by the conflict rule
            theirs[difference.doc_id] = ours[difference.doc_id]


VERSION = st.tuples(st.integers(1, 5), st.integers(0, 10**6), st.booleans()).map(
    lambda v: (0 if v[2] else v[0], v[1], v[2])
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    size=st.integers(0, 3000),
    changes=st.lists(
        st.tuples(st.sampled_from(["missing", "stale", "extra", "deleted"]), st.integers(0, 10**6)),
        max_size=60,
    ),
)
def test_two_stores_with_random_differences_end_equal_in_few_rounds(
    size: int, changes: list[tuple[str, int]]
) -> None:
    theirs: Store = {f"doc-{i}": (1, 1000 + i, False) for i in range(size)}
    ours = dict(theirs)
    for kind, n in changes:
        doc_id = f"doc-{n % size}" if size else f"new-{n}"
        if kind == "missing" and doc_id in ours:
            del ours[doc_id]
        elif kind == "stale" and doc_id in theirs:
            revision, modified, _ = theirs[doc_id]
            theirs[doc_id] = (revision + 1, modified + 1, False)
        elif kind == "extra":
            ours[f"extra-{n}"] = (1, n, False)
        elif kind == "deleted" and doc_id in theirs:
            (ours if n % 2 else theirs)[doc_id] = (0, 2_000_000 + n, True)
    differences, rounds = run_check(theirs, ours)
    repair(theirs, ours, differences)
    assert ours == theirs
    again, equal_rounds = run_check(theirs, ours)
    assert again == []
    assert equal_rounds == 1
    # Rounds grow with log(size): one per level of 16-way splits down to a bucket, plus
    # one when the headers of the differing buckets fill a result.
    levels = math.ceil(math.log(server.BUCKETS, server.SPLIT_PARTS))
    assert rounds <= levels + 2
