"""Range summaries: the hashes both sides of a range check compute (docs/protocol.md, "Ranges").

Pure functions, no Django: the server (replication/ranges.py) and the protocol machine use
them, and the client SDK implements the same few lines (sdk/datagate_replica/ranges.py).

- Every id falls in one of `BUCKETS` (4096) fixed buckets: the top 12 bits of the CRC-32 of
  its UTF-8 bytes. A range is a half-open interval of buckets `[lo, hi)`. (CRC-32 only spreads
  ids over buckets; it is never summed.)
- Every held version (a document or a tombstone) has a 64-bit hash: BLAKE2b with an 8-byte
  digest of `utf8(id) || revision || _modified || deleted` (two signed 64-bit big-endian
  integers and one byte, 1 for a tombstone, whose `_modified` is its delete time), read as an
  unsigned big-endian integer. A tombstone's revision counts as 0: the wire carries only a
  delete's time (`tombstoneMap`), so each replica numbers its tombstones itself, and for the
  conflict rule only the time of a delete matters. Tombstones count, so a delete is a
  difference.
- A range's summary is its number of versions and the XOR of their hashes. XOR, not a hash of
  the sorted list, because it is incremental: a write changes a bucket's hash by `old ^ new`
  without reading the bucket's other rows, so the server keeps its summaries inside every
  write's transaction for the price of a few hashes and one small upsert per batch (of at
  most 64 rows: the server stores groups of 64 buckets, `STORED_BITS`)
  (docs/decisions/0012-range-summaries-are-xor-of-version-hashes.md).

On the wire a hash is 16 lower-case hex digits (JSON numbers above 2**53 are not safe in
every client); in the database it is a signed 64-bit integer.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from struct import Struct

BUCKET_BITS = 12
BUCKETS = 1 << BUCKET_BITS
BUCKET_SHIFT = 32 - BUCKET_BITS
# The server stores summaries of 64 groups of 64 buckets: a write's batch of 500 ids then
# touches at most 64 rows (4096 stored rows would be ~470 rows per batch, most of the upkeep's
# cost). Finer summaries are computed from the rows, once per session (replication/ranges.py).
STORED_BITS = 6
STORED_SHIFT = 32 - STORED_BITS  # a stored group from an id's CRC-32
GROUP_SHIFT = BUCKET_BITS - STORED_BITS  # a stored group from a bucket
_U64 = 1 << 64
_SIGN = 1 << 63
VERSION_TAIL = Struct(">qqB").pack


def bucket_of(doc_id: str) -> int:
    """The bucket of an id: the top BUCKET_BITS bits of the CRC-32 of its UTF-8 bytes."""
    return zlib.crc32(doc_id.encode()) >> BUCKET_SHIFT


def key_bucket(key: bytes) -> int:
    """`bucket_of` for an id already encoded (writers encode it once for both hashes)."""
    return zlib.crc32(key) >> BUCKET_SHIFT


def key_version_hash(key: bytes, revision: int, modified: int, deleted: bool) -> int:
    if deleted:
        revision = 0  # the wire carries only a delete's time: replicas number it themselves
    digest = blake2b(key + VERSION_TAIL(revision, modified, deleted), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def version_hash(doc_id: str, revision: int, modified: int, deleted: bool) -> int:
    """The unsigned 64-bit hash of one held version (a document, or a tombstone)."""
    return key_version_hash(doc_id.encode(), revision, modified, deleted)


def to_signed(value: int) -> int:
    """An unsigned 64-bit value as the signed integer a BIGINT column holds."""
    return value - _U64 if value >= _SIGN else value


def to_unsigned(value: int) -> int:
    return value + _U64 if value < 0 else value


def hash_to_wire(value: int) -> str:
    return f"{value & (_U64 - 1):016x}"


def hash_from_wire(text: str) -> int:
    return int(text, 16)


@dataclass(frozen=True, slots=True)
class Summary:
    """A range's number of held versions and the XOR of their hashes (unsigned)."""

    count: int = 0
    hash: int = 0

    def __add__(self, other: Summary) -> Summary:
        return Summary(self.count + other.count, self.hash ^ other.hash)


EMPTY = Summary()


@dataclass(frozen=True, slots=True)
class Header:
    """What a range check compares of one held version."""

    doc_id: str
    revision: int
    modified: int
    deleted: bool

    @property
    def hash(self) -> int:
        return version_hash(self.doc_id, self.revision, self.modified, self.deleted)

    def to_wire(self) -> list[object]:
        return [self.doc_id, self.revision, self.modified, 1 if self.deleted else 0]


class BucketTable:
    """Per-bucket summaries of one store (sparse: empty buckets are left out).

    With `shift`, each key is a group of 2**shift buckets (the server's stored rows): such a
    table answers only ranges whose bounds are multiples of the group (`answers`)."""

    def __init__(self, buckets: dict[int, Summary] | None = None, shift: int = 0) -> None:
        self.buckets: dict[int, Summary] = buckets or {}
        self.shift = shift

    def answers(self, lo: int, hi: int) -> bool:
        unit = (1 << self.shift) - 1
        return not (lo & unit or hi & unit)

    def grouped(self, shift: int) -> BucketTable:
        """This (per-bucket) table summed into groups of 2**shift buckets."""
        groups: dict[int, Summary] = {}
        for bucket, summary in self.buckets.items():
            group = bucket >> shift
            groups[group] = groups.get(group, EMPTY) + summary
        return BucketTable(groups, shift)

    @classmethod
    def of(cls, headers: Iterable[Header]) -> BucketTable:
        counts: dict[int, int] = {}
        hashes: dict[int, int] = {}
        for header in headers:
            bucket = bucket_of(header.doc_id)
            counts[bucket] = counts.get(bucket, 0) + 1
            hashes[bucket] = hashes.get(bucket, 0) ^ header.hash
        return cls({b: Summary(counts[b], hashes[b]) for b in counts})

    def summary(self, lo: int, hi: int) -> Summary:
        if self.shift:
            assert self.answers(lo, hi), f"[{lo}, {hi}) is finer than this table"
            lo, hi = lo >> self.shift, hi >> self.shift
        count = 0
        value = 0
        if hi - lo < len(self.buckets):
            for bucket in range(lo, hi):
                found = self.buckets.get(bucket)
                if found is not None:
                    count += found.count
                    value ^= found.hash
        else:
            for bucket, found in self.buckets.items():
                if lo <= bucket < hi:
                    count += found.count
                    value ^= found.hash
        return Summary(count, value)

    def total(self) -> Summary:
        return self.summary(0, BUCKETS)


def split(lo: int, hi: int, parts: int) -> Iterator[tuple[int, int]]:
    """`[lo, hi)` cut into at most `parts` adjacent ranges of (nearly) equal width."""
    width = hi - lo
    parts = max(1, min(parts, width))
    edges = [lo + (width * i) // parts for i in range(parts + 1)]
    for start, end in itertools.pairwise(edges):
        if end > start:
            yield start, end


def valid_range(lo: int, hi: int) -> bool:
    return 0 <= lo < hi <= BUCKETS


def in_ranges(bucket: int, ranges: Sequence[tuple[int, int]]) -> bool:
    return any(lo <= bucket < hi for lo, hi in ranges)


# --- answering a range check (docs/protocol.md, "Ranges") -----------------------------------

LEAF_MAX = 64  # a range holding at most this many versions is answered with its headers
SPLIT_PARTS = 16  # an unequal larger range is answered with this many sub-ranges
HEADERS_MAX = 4000  # headers in one range.result (about 200 kB); further leaves wait
EQUAL, SPLIT, HEADERS, LATER = "equal", "split", "headers", "later"


@dataclass(frozen=True, slots=True)
class Ask:
    """One range of a range.check, with the client's summary of it."""

    lo: int
    hi: int
    summary: Summary


@dataclass(frozen=True, slots=True)
class Answer:
    ask: Ask
    status: str
    parts: tuple[tuple[int, int, Summary], ...] = ()


def plan_needs_buckets(table: BucketTable, asks: Sequence[Ask]) -> bool:
    """True when `table` (grouped) cannot answer `asks`: a range, or the parts it would be
    split into, is finer than its groups."""
    for ask in asks:
        if not table.answers(ask.lo, ask.hi):
            return True
        if any(not table.answers(a, b) for a, b in split(ask.lo, ask.hi, SPLIT_PARTS)):
            return True
    return False


def answer_plan(table: BucketTable, asks: Sequence[Ask]) -> list[Answer]:
    """What to answer for each range, given the server's summaries: equal, split into
    SPLIT_PARTS with their summaries, its headers (LEAF_MAX versions or fewer, or a single
    bucket), or later (the result already carries HEADERS_MAX headers)."""
    answers: list[Answer] = []
    headers = 0
    for ask in asks:
        server = table.summary(ask.lo, ask.hi)
        if server == ask.summary:
            answers.append(Answer(ask, EQUAL))
        elif server.count <= LEAF_MAX or ask.hi - ask.lo == 1:
            if headers and headers + server.count > HEADERS_MAX:
                answers.append(Answer(ask, LATER))
            else:
                headers += server.count
                answers.append(Answer(ask, HEADERS))
        else:
            parts = tuple(
                (a, b, table.summary(a, b)) for a, b in split(ask.lo, ask.hi, SPLIT_PARTS)
            )
            answers.append(Answer(ask, SPLIT, parts))
    return answers


def answer_to_wire(answer: Answer, headers: Sequence[Header] = ()) -> dict[str, object]:
    wire: dict[str, object] = {"lo": answer.ask.lo, "hi": answer.ask.hi, "status": answer.status}
    if answer.status == SPLIT:
        wire["parts"] = [
            {"lo": a, "hi": b, "count": s.count, "hash": hash_to_wire(s.hash)}
            for a, b, s in answer.parts
        ]
    elif answer.status == HEADERS:
        wire["headers"] = [h.to_wire() for h in headers]
    return wire
