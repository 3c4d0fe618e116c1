"""Pull and live frames splice each stored body's JSON text instead of decoding and encoding it
again (issue 21, `changes.wire_document`, `messages.encode_served`). A spliced frame decodes
to the same message as the frame the decoding path builds, on SQLite and on PostgreSQL
(`storage`), for any body the door accepts and for rows planted behind its back."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.access import System
from core.envelope import make_header
from replication.changes import Version, wire_document
from replication.models import Collection, Document
from replication.protocol import g3
from replication.protocol.conflicts import WRITE
from replication.protocol.messages import BATCH_CONTINUE, EncodedDocument, encode_served
from replication.selectors import Change, changes_since, feed_from_changes
from replication.services.engine import batch_apply

T0 = 1_700_000_000_000


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"{name} in a served frame: not JSON")


def strict_loads(text: str) -> Any:
    """What a strict client (Jackson in G3 mode) accepts: JSON, no NaN, valid UTF-8."""
    text.encode("utf-8")
    return json.loads(text, parse_constant=_refuse_constant)


def pull_frame(changes: list[Change]) -> tuple[str, list[tuple[str, str]]]:
    """A pull chunk as the consumer sends it (header, feed, markers) for `changes`."""
    return encode_served(
        {
            "header": make_header(message_type=BATCH_CONTINUE, origin="server"),
            "feed": feed_from_changes(changes),
            "nextOffset": len(changes),
            "batchSize": 500,
            "startMarkers": {"collectionMarker": 0, "tombstoneMarker": 0},
            "endMarkers": {"collectionMarker": 99, "tombstoneMarker": 0},
        }
    )


def both_frames(collection_id: int) -> tuple[Any, Any, list[Any], list[Any]]:
    """(decoded old frame, decoded spliced frame, old skipped, spliced skipped)."""
    decoded = changes_since(collection_id=collection_id, after_seq=0, limit=1000)
    as_text = changes_since(collection_id=collection_id, after_seq=0, limit=1000, as_text=True)
    assert [c.seq for c in decoded] == [c.seq for c in as_text]
    old, old_skipped = pull_frame(decoded)
    new, new_skipped = pull_frame(as_text)
    old_message, new_message = strict_loads(old), strict_loads(new)
    # Headers carry a fresh id each: compare everything else.
    old_message.pop("header"), new_message.pop("header")
    return old_message, new_message, old_skipped, new_skipped


# --- no database: the splice itself -----------------------------------------------------------


def text_version(doc_id: str, text: str, origin: str = "r") -> Version:
    return Version(doc_id, WRITE, T0, 3, origin, None, text)


@pytest.mark.parametrize(
    "text",
    ['{"a":1}', "{}", '{"a": [1, 2], "b": {"c": null}}', '{"é":"ü\\n\\"x\\""}', '{"n":-1.5e-7}'],
)
def test_a_spliced_document_decodes_to_the_document_version_to_wire_makes(text: str) -> None:
    spliced = wire_document(text_version('d\u00e9"1', text, origin="o\\x"))
    assert isinstance(spliced, EncodedDocument)
    decoded = wire_document(Version('d\u00e9"1', WRITE, T0, 3, "o\\x", json.loads(text)))
    assert strict_loads(spliced.text) == decoded
    assert list(strict_loads(spliced.text))[-4:] == ["_id", "_revision", "_modified", "_origin"]


@pytest.mark.parametrize(
    "text",
    [
        '{"n":NaN}',  # rows written by Python's json before the door
        '{"n":-Infinity}',
        '{"t":"\\ud800"}',  # a lone surrogate, escaped by an ASCII-only encoder
        '{"_id":"other","v":1}',  # a reserved key: the meta fields would be there twice
        '{"x":' + "[" * 300 + "]" * 300 + "}",  # deep: the encoder's limit decides, as before
    ],
)
def test_what_the_screen_catches_goes_the_decoding_way(text: str) -> None:
    document = wire_document(text_version("d", text))
    assert not isinstance(document, EncodedDocument)
    assert document["_id"] == "d"


def test_a_mixed_changeset_keeps_its_order_and_leaves_out_the_unservable() -> None:
    feed = {
        "changeSet": [
            wire_document(text_version("a", '{"v":1}')),
            wire_document(text_version("b", '{"v":NaN}')),  # decoded, then left out
            wire_document(text_version("c", '{"v":"\\ud83d\\ude00"}')),  # a pair: served
            wire_document(text_version("d\ud800", '{"v":4}')),  # a lone surrogate in the id
            wire_document(text_version("e", "{}")),
        ],
        "tombstoneMap": {"t": T0},
    }
    text, skipped = encode_served({"header": {"id": "h"}, "feed": feed})
    message = strict_loads(text)
    assert [d["_id"] for d in message["feed"]["changeSet"]] == ["a", "c", "e"]
    assert message["feed"]["changeSet"][1]["v"] == "\U0001f600"
    assert message["feed"]["tombstoneMap"] == {"t": T0}
    assert message["header"] == {"id": "h"}
    assert sorted(reason for _, reason in skipped) == ["NaN or Infinity", "a lone surrogate"]


@pytest.mark.parametrize("text", ['{"a":1,"b":[true]}', "{}", '{"_origin":"x"}'])
def test_a_g3_pull_chunk_spliced_has_no_origin_like_the_decoded_one(text: str) -> None:
    """G3 would keep `_origin` as a user field and push it back (`g3.without_origin`)."""
    version = text_version("d", text)
    decoded = Version("d", WRITE, T0, 3, "r", json.loads(text))

    def chunk(document: Any) -> Any:
        header = make_header(message_type=BATCH_CONTINUE, origin="server")
        message = g3.shape({"header": header, "feed": {"changeSet": [document]}})
        return strict_loads(encode_served(message)[0])["feed"]

    assert chunk(wire_document(version)) == chunk(wire_document(decoded))
    assert "_origin" not in chunk(wire_document(version))["changeSet"][0]


# --- both backends: spliced frames equal decoded ones ------------------------------------------

KEYS = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
    max_size=8,
).filter(lambda key: not key.startswith("_"))
TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
    max_size=20,
)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
    | st.sampled_from(['"', "\\", "\n\t", "NaN", "_x", "\u2028", "\U0001f600", "</script>"])
)
VALUES = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=30,
)
BODIES = st.dictionaries(KEYS, VALUES, max_size=5)


@pytest.mark.storage
@pytest.mark.django_db
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bodies=st.lists(BODIES, min_size=1, max_size=6), delete=st.integers(0, 6))
def test_a_spliced_pull_frame_decodes_to_the_frame_the_decoding_path_builds(
    tenant: Any, bodies: list[dict[str, Any]], delete: int
) -> None:
    collection = Collection.objects.create(tenant=tenant, name=f"s{Collection.objects.count()}")
    docs = [
        {"_id": f"d{n}\u00e9", "_revision": 1, "_modified": T0 + n, **body}
        for n, body in enumerate(bodies)
    ]
    tombstones = {f"d{delete}\u00e9": T0 + 100} if delete < len(docs) else {}
    batch_apply(
        actor=System("t"), collection_id=collection.pk, feed={"changeSet": docs}, origin="r"
    )
    if tombstones:
        batch_apply(
            actor=System("t"),
            collection_id=collection.pk,
            feed={"tombstoneMap": tombstones},
            origin="r",
        )
    old, new, old_skipped, new_skipped = both_frames(collection.pk)
    assert new == old
    assert old_skipped == new_skipped == []
    assert len(new["feed"]["changeSet"]) == len(docs) - len(tombstones)


def plant(collection: Any, doc_id: str, body: Any) -> bool:
    """Overwrite a stored body behind the services' back; False if the database refuses."""
    try:
        with transaction.atomic():
            Document.objects.filter(collection=collection, doc_id=doc_id).update(body=body)
    except Exception:
        return False
    return True


@pytest.mark.storage
@pytest.mark.django_db
def test_planted_rows_are_served_or_left_out_the_same_way_spliced(collection: Any) -> None:
    ids = ["good", "surrogate", "pair", "reserved", "nul", "deep", "nan-text", "huge"]
    batch_apply(
        actor=System("t"),
        collection_id=collection.pk,
        feed={"changeSet": [{"_id": i, "_revision": 1, "_modified": T0, "v": 1} for i in ids]},
        origin="r",
    )
    plant(collection, "surrogate", {"t": "x\ud800y"})  # SQLite only: jsonb refuses it
    plant(collection, "nul", {"t": "a\x00b"})  # SQLite only
    assert plant(collection, "pair", {"t": "\U0001f600"})  # Django's ASCII-only text
    assert plant(collection, "reserved", {"_id": "forged", "_revision": 99, "v": 2})
    deep: Any = 0
    for _ in range(300):
        deep = [deep]
    assert plant(collection, "deep", {"d": deep})
    assert plant(collection, "nan-text", {"v": "NaN", "w": math.pi})
    assert plant(collection, "huge", {"v": 2**100, "f": 1e300})
    old, new, old_skipped, new_skipped = both_frames(collection.pk)
    assert new == old
    assert new_skipped == old_skipped
    served = {d["_id"] for d in new["feed"]["changeSet"]}
    left_out = {"surrogate"} if connection.vendor == "sqlite" else set()
    assert served == set(ids) - left_out
    reserved = next(d for d in new["feed"]["changeSet"] if d["_id"] == "reserved")
    assert reserved["_revision"] == 1


@given(
    text=st.text(alphabet=st.sampled_from(list('NaInfity"_\\udD89aFx{}[]: ,')), max_size=40)
    | st.text(max_size=40)
)
@settings(max_examples=300, deadline=None)
def test_the_splice_screens_substring_tests_say_what_its_regex_says(text: str) -> None:
    from replication.changes import _DECODE_FIRST, _decode_first

    assert _decode_first(text) == (_DECODE_FIRST.search(text) is not None)
