"""Property-based tests of the HTTP API, generated from its own OpenAPI schema (schemathesis).

Every operation gets generated requests (path and query parameters, headers, bodies) sent
in-process to the WSGI application, with a token holding every scope, against a tenant that
has a collection, documents, a search index and a topic, so that the schema's examples reach
real data. No answer may be a server error, and every answer must match the schema: its status
code, content type, headers and body.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err, Ok

from accounts.access import System
from accounts.services import tenant_get_or_create
from replication.services.documents import document_put
from search.services import search_index_configure
from tests.support.fast_accounts import fast_cli_application, person
from topics.services import topic_create

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 8
# Generated names mostly miss; each case is also sent to the tenant, collection and topic that
# exist, so that generated query parameters, headers and bodies reach real data.
KNOWN = {"tenant": "acme", "collection": "notes", "topic": "news"}


@pytest.fixture
def wsgi_app(db: Any) -> Any:
    """The WSGI application, kept from closing the test's database connection after each
    request (what Django's own test client does)."""
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield get_wsgi_application()
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


@pytest.fixture
def token(collection: Any, issue_token: Any) -> str:
    cache.clear()
    fast_cli_application()
    user = person("ann", "acme", "writer")
    for n in range(3):
        document_put(
            actor=System("test"),
            collection_id=collection.pk,
            doc_id=f"note-{n}",
            body={"title": f"note {n}", "tags": ["a", n]},
            origin="t",
        )
    search_index_configure(collection_id=collection.pk, fields=["title"])
    topic_create(tenant=tenant_get_or_create(slug="acme"), name="news", scope="global", owner_id=1)
    return str(issue_token(user, "read write topics"))


def test_generated_requests_get_no_server_error_and_answers_that_fit_the_schema(
    token: str, wsgi_app: Any
) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", wsgi_app)
    results = list(schema.get_all_operations())
    problems = [r.err() for r in results if isinstance(r, Err)]
    assert not problems, problems
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) >= 12
    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def exercise(case: Any) -> None:
            headers = {"Authorization": f"Bearer {token}"}
            response = case.call(headers=headers)
            case.validate_response(response, checks=CHECKS, headers=headers)
            if case.path_parameters:
                for name in set(case.path_parameters) & set(KNOWN):
                    case.path_parameters[name] = KNOWN[name]
                response = case.call(headers=headers)
                case.validate_response(response, checks=CHECKS, headers=headers)

        exercise()
