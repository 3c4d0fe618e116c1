"""`access.roles_memoised`: one membership query per block of work, not one per check."""

from __future__ import annotations

from typing import Any

import pytest

from accounts import access
from accounts.services import membership_set


@pytest.mark.django_db
def test_a_pushed_chunk_checks_the_role_with_one_query(
    member: Any, tenant: Any, django_assert_num_queries: Any
) -> None:
    user = member("writer", "writer")
    with django_assert_num_queries(1), access.roles_memoised():
        for index in range(50):
            assert access.access_document_write(
                user=user, tenant=tenant, collection_name="notes", doc_id=f"d{index}"
            )


@pytest.mark.django_db
def test_without_the_block_every_check_reads_the_role(
    member: Any, tenant: Any, django_assert_num_queries: Any
) -> None:
    user = member("writer", "writer")
    with django_assert_num_queries(3):
        for index in range(3):
            access.access_document_write(
                user=user, tenant=tenant, collection_name="notes", doc_id=f"d{index}"
            )


@pytest.mark.django_db
def test_a_role_change_takes_effect_in_the_next_block(member: Any, tenant: Any) -> None:
    user = member("writer", "writer")
    with access.roles_memoised():
        assert access.access_collection_write(user=user, tenant=tenant, collection_name="notes")
    membership_set(user=user, tenant=tenant, role="reader")
    with access.roles_memoised():
        assert not access.access_collection_write(user=user, tenant=tenant, collection_name="notes")
