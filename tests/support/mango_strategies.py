"""Generated Mango selectors and the documents they are evaluated on (hypothesis strategies),
shared by the selector tests (`tests/replication/test_mango.py`) and a view's re-sync by
difference (`tests/replication/test_view_resync.py`). `DATAGATE_MANGO_EXAMPLES` runs more."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import strategies as st

from replication.protocol import mango

EXAMPLES = int(os.environ.get("DATAGATE_MANGO_EXAMPLES", "60"))

KEYS = ["a", "b", "c"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False, width=64)
    | st.sampled_from(["", "a", "b", "B", "ab", "é", "Z", "10", "9"])
)
leaf_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=2)
        | st.dictionaries(st.sampled_from(KEYS), children, max_size=3)
    ),
    max_leaves=6,
)
bodies = st.dictionaries(st.sampled_from(KEYS), leaf_values, max_size=3)
paths = st.lists(st.sampled_from(KEYS), min_size=1, max_size=2).map(".".join)
operands = scalars.filter(lambda v: not isinstance(v, float) or abs(v) < 1e300)


def _field_conditions() -> st.SearchStrategy[Any]:
    comparable = st.integers(-5, 5) | st.floats(-5, 5) | st.sampled_from(["", "a", "b", "é"])
    return st.one_of(
        operands,
        st.fixed_dictionaries({"$eq": operands}),
        st.fixed_dictionaries({"$ne": operands}),
        st.fixed_dictionaries({"$in": st.lists(operands, max_size=3)}),
        st.fixed_dictionaries({"$nin": st.lists(operands, max_size=3)}),
        st.fixed_dictionaries({"$exists": st.booleans()}),
        st.builds(lambda op, v: {op: v}, st.sampled_from(mango.COMPARISONS), comparable),
    )


selectors = st.recursive(
    st.dictionaries(paths, _field_conditions(), min_size=1, max_size=2),
    lambda children: st.one_of(
        st.builds(lambda xs: {"$and": xs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda xs: {"$or": xs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda x: {"$not": x}, children),
    ),
    max_leaves=6,
)
