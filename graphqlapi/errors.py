"""GraphQL errors carry the catalogue's codes (docs/errors.md) in `extensions.code`.

A resolver raises the same `DataGateError` as every other interface; its text (starting with
the code) becomes the error's message. A request GraphQL itself refuses (syntax, unknown fields,
wrong argument types) is DG-8008 with GraphQL's explanation; one over the depth, token or alias
limits is DG-8009. Anything else is a bug: DG-5003 with a reference to the server log, never a
traceback.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

from graphql import ExecutionResult as GraphQLExecutionResult
from graphql.error import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.types.execution import ExecutionResult

from core.errors import DataGateError, ErrorCode

logger = logging.getLogger(__name__)

# What strawberry's limit extensions and graphql-core's own limits (tokens, introspection
# depth) say when they refuse (graphql-core 3.3, strawberry 0.341; tests/graphql/test_graphql.py).
LIMIT_WORDS = (
    "exceeds maximum operation depth",
    "maximum introspection depth exceeded",
    "aliases found. allowed",
    "tokens. parsing aborted",
)


def datagate_error(error: GraphQLError) -> DataGateError:
    """The catalogue error a GraphQL error stands for."""
    original = error.original_error
    if isinstance(original, DataGateError):
        return original
    if original is None or error.path is None:
        detail = error.message
        lowered = detail.lower()
        if any(word in lowered for word in LIMIT_WORDS):
            return DataGateError(ErrorCode.GRAPHQL_TOO_COMPLEX, detail=detail)
        return DataGateError(ErrorCode.GRAPHQL_INVALID, detail=detail)
    reference = uuid.uuid4().hex[:12]
    logger.error("internal error %s in GraphQL", reference, exc_info=original)
    return DataGateError(ErrorCode.INTERNAL, reference=reference)


def coded(error: GraphQLError) -> GraphQLError:
    if (error.extensions or {}).get("code", "").startswith("DG-"):
        return error
    found = datagate_error(error)
    return GraphQLError(
        message=found.text,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=found,
        extensions={**(error.extensions or {}), "code": found.code},
    )


def _code_result(result: Any) -> None:
    errors = getattr(result, "errors", None)
    if errors:
        result.errors = [coded(e) for e in errors]


class DataGateErrors(SchemaExtension):
    """Give every error of a result its DG code (HTTP results and each websocket frame)."""

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if isinstance(result, GraphQLExecutionResult | ExecutionResult):
            _code_result(result)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        _code_result(result)
        yield None
