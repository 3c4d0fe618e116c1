"""Stored documents the door would refuse: found (`datagate_verify`, DG-7108) and quarantined
or repaired (`datagate_quarantine`, docs/maintenance.md).

Such rows were written before the document door existed, or into the database by hand. Pulls
and pages leave them out (DG-5005, docs/decisions/0013); this is how an operator ends that:

- every such document is copied to `QuarantinedDocument` (the body as ASCII-escaped JSON);
- with `repair`, a body whose only faults are text and numbers is written again through the
  services with lone surrogates and NUL replaced by U+FFFD and NaN/Infinity by null: a new
  revision and seq, so every replica receives it;
- otherwise (or when the repair still fails the door) it is deleted through the services: a
  tombstone, so replicas that hold an older version drop it;
- a row whose id breaks the id rules cannot pass the services at all: it is removed directly
  (no replica can have received it intact).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from accounts.access import System
from core.door import door_refusal, id_check, printable
from core.errors import DataGateError
from replication.models import Collection, Document, QuarantinedDocument, Tombstone
from replication.services.documents import document_delete, document_put

ACTOR = System("datagate_quarantine")
ORIGIN = "datagate_quarantine"
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class Unservable:
    doc_id: str
    reason: str  # the door's code
    tombstone: bool = False


def _id_refusal(doc_id: str, origin: str) -> str | None:
    try:
        id_check(doc_id)
        id_check(origin, origin=True, doc_id=doc_id)
    except DataGateError as error:
        return error.code
    return None


def unservable_rows(*, collection_id: int) -> Iterator[Unservable]:
    """Every document (and tombstone) of the collection that the door would refuse."""
    max_depth = int(settings.DATAGATE["MAX_DOCUMENT_DEPTH"])
    rows = Document.objects.filter(collection_id=collection_id).order_by("seq")
    for doc_id, origin, body in rows.values_list("doc_id", "origin", "body").iterator():
        reason = _id_refusal(doc_id, origin) or door_refusal(body, max_depth=max_depth)
        if reason is not None:
            yield Unservable(doc_id, reason)
    tombs = Tombstone.objects.filter(collection_id=collection_id).order_by("seq")
    for doc_id, origin in tombs.values_list("doc_id", "origin").iterator():
        reason = _id_refusal(doc_id, origin)
        if reason is not None:
            yield Unservable(doc_id, reason, tombstone=True)


def repaired(value: Any) -> Any:
    """`value` with lone surrogates and NUL as U+FFFD and NaN/Infinity as null."""
    if isinstance(value, str):
        return _BAD_TEXT.sub("\ufffd", value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [repaired(item) for item in value]
    if isinstance(value, dict):
        return {repaired(key): repaired(item) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class Quarantined:
    doc_id: str
    reason: str
    action: str  # repaired, deleted, removed, or "would ..." in a dry run


def collection_quarantine(
    *, collection_id: int, repair: bool = False, dry_run: bool = False
) -> list[Quarantined]:
    """Quarantine (or repair) every unservable document of one collection; see the module."""

    collection = Collection.objects.get(pk=collection_id)
    max_depth = int(settings.DATAGATE["MAX_DOCUMENT_DEPTH"])
    done: list[Quarantined] = []
    for found in list(unservable_rows(collection_id=collection_id)):
        shown = printable(found.doc_id, limit=1024)
        if found.tombstone:
            if not dry_run:
                Tombstone.objects.filter(collection=collection, doc_id=found.doc_id).delete()
            done.append(Quarantined(shown, found.reason, _said("removed", dry_run)))
            continue
        row = Document.objects.filter(collection=collection, doc_id=found.doc_id).first()
        if row is None:  # changed meanwhile
            continue
        fixed = repaired(row.body) if repair and found.reason in ("DG-4010", "DG-4012") else None
        if fixed is not None and door_refusal(fixed, max_depth=max_depth) is not None:
            fixed = None
        bad_id = found.reason in ("DG-4002", "DG-4008")
        action = "removed" if bad_id else ("repaired" if fixed is not None else "deleted")
        done.append(Quarantined(shown, found.reason, _said(action, dry_run)))
        if dry_run:
            continue
        with transaction.atomic():
            QuarantinedDocument.objects.create(
                collection=collection,
                doc_id=shown,
                body_text=_escaped(row.body),
                revision=row.revision,
                modified=row.modified,
                origin=printable(row.origin, limit=1024),
                seq=row.seq,
                reason=found.reason,
                action=action,
            )
            if bad_id:
                row.delete()
            elif fixed is not None:
                document_put(
                    actor=ACTOR,
                    collection_id=collection.pk,
                    doc_id=row.doc_id,
                    body=fixed,
                    origin=ORIGIN,
                )
            else:
                document_delete(
                    actor=ACTOR, collection_id=collection.pk, doc_id=row.doc_id, origin=ORIGIN
                )
    return done


def _said(action: str, dry_run: bool) -> str:
    return f"would be {action}" if dry_run else action


def _escaped(body: Any) -> str:
    try:
        return json.dumps(body, ensure_ascii=True, sort_keys=True)
    except (ValueError, RecursionError, TypeError):
        return repr(body)[:100_000]
