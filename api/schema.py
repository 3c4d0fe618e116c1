"""OpenAPI pieces the views share: wire shapes (document, feed, markers) and the error body.

The wire shapes are those of the websocket protocol (docs/protocol.md), so a client can use one
model for both. Every operation documents the error statuses it can answer, all in the one
error shape (api/errors.py).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiExample, OpenApiParameter
from rest_framework import serializers

DOCUMENT: dict[str, Any] = {
    "type": "object",
    "description": "A document as on the wire: the user's fields plus the meta fields.",
    "properties": {
        "_id": {"type": "string", "maxLength": 128},
        "_revision": {"type": "integer", "minimum": 1},
        "_modified": {"type": "integer", "description": "epoch milliseconds"},
        "_origin": {"type": "string"},
    },
    "required": ["_id", "_revision", "_modified", "_origin"],
    "additionalProperties": True,
}
DOCUMENT_BODY: dict[str, Any] = {
    "type": "object",
    "description": (
        "The document's fields. `_revision` (optional) makes the write conditional: it must be "
        "the stored revision (0: the document must not exist). `_id` may repeat the URL's id; "
        "`_modified` and `_origin` are set by the server. Other `_` fields are reserved."
    ),
    "additionalProperties": True,
}
MARKERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "collectionMarker": {"type": "integer", "minimum": 0},
        "tombstoneMarker": {"type": "integer", "minimum": 0},
    },
    "required": ["collectionMarker", "tombstoneMarker"],
}
FEED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "changeSet": {"type": "array", "items": DOCUMENT},
        "tombstoneMap": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "deleted id -> delete time in epoch milliseconds",
        },
    },
    "required": ["changeSet", "tombstoneMap"],
}
ERROR: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "pattern": "^DG-[0-9]{4}$"},
                "message": {"type": "string", "maxLength": 123},
                "status": {"type": "integer"},
            },
            "required": ["code", "message", "status"],
        }
    },
    "required": ["error"],
}
ERROR_STATUSES = {
    "400": "Bad parameter or body (DG-8003, DG-8004, DG-4xxx)",
    "401": "Missing, invalid or expired token (DG-1001)",
    "403": "Token lacks the scope, or the user lacks the right (DG-1002, DG-3xxx)",
    "404": "Not found, or not visible to the caller (DG-8001, DG-3001)",
    "405": "Method not allowed (DG-8002)",
    "406": "Not acceptable (DG-8006)",
    "409": "Revision conflict or search not enabled (DG-4009, DG-8007)",
    "415": "Unsupported media type (DG-8005)",
    "429": "Rate limited (DG-5002)",
}


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "api.authentication.BearerTokenAuthentication"
    name = "bearer"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "An OAuth2 access token (scopes: read, write, topics); "
                "`manage.py datagate_token USER --scope read` prints one."
            ),
        }


def add_error_responses(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular post-processing hook: the error body on every API operation."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR
    reference = {"$ref": "#/components/schemas/Error"}
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/v1/") or path.startswith("/api/v1/schema"):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, description in ERROR_STATUSES.items():
                responses.setdefault(
                    status,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": reference}},
                    },
                )
    return result


TENANT_PARAM = OpenApiParameter(
    "tenant",
    str,
    OpenApiParameter.PATH,
    description="tenant slug",
    examples=[OpenApiExample("acme", value="acme")],
)
COLLECTION_PARAM = OpenApiParameter(
    "collection",
    str,
    OpenApiParameter.PATH,
    description="collection name",
    examples=[OpenApiExample("notes", value="notes")],
)
DOC_ID_PARAM = OpenApiParameter(
    "doc_id",
    str,
    OpenApiParameter.PATH,
    description="document id (at most 128 characters)",
    examples=[OpenApiExample("a note", value="note-1")],
)
LIMIT_PARAM = OpenApiParameter(
    "limit", int, OpenApiParameter.QUERY, required=False, description="page size"
)


class TenantSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    role = serializers.ChoiceField(choices=["admin", "writer", "reader"])


class TenantListSerializer(serializers.Serializer):
    tenants = TenantSerializer(many=True)


class CollectionSummarySerializer(serializers.Serializer):
    name = serializers.CharField()
    markers = serializers.DictField(child=serializers.IntegerField())


class CollectionListSerializer(serializers.Serializer):
    collections = CollectionSummarySerializer(many=True)


class CollectionStatsSerializer(serializers.Serializer):
    name = serializers.CharField()
    tenant = serializers.CharField()
    markers = serializers.DictField(child=serializers.IntegerField())
    purgeMarker = serializers.IntegerField()
    documents = serializers.IntegerField()
    tombstones = serializers.IntegerField()
    replicas = serializers.IntegerField()
    replicasOnline = serializers.IntegerField()
    tombstoneTtlDays = serializers.IntegerField()
    searchFields = serializers.ListField(child=serializers.CharField())
    createdAt = serializers.DateTimeField()


DOCUMENT_PAGE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "documents": {"type": "array", "items": DOCUMENT},
        "next": {
            "type": "string",
            "nullable": True,
            "description": "pass as `after` for the next page; null on the last page",
        },
    },
    "required": ["documents", "next"],
}
CHANGES_PAGE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "feed": FEED,
        "reset": {
            "type": "boolean",
            "description": (
                "a full snapshot follows (the markers are older than the purge horizon or "
                "the server was restored): drop local documents absent from it"
            ),
        },
        "startMarkers": MARKERS,
        "endMarkers": MARKERS,
        "hasMore": {"type": "boolean"},
        "next": {
            "type": "string",
            "nullable": True,
            "description": "the URL of the next page, while hasMore",
        },
    },
    "required": ["feed", "reset", "startMarkers", "endMarkers", "hasMore", "next"],
}
SEARCH_RESULTS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "_id": {"type": "string"},
                    "score": {"type": "number"},
                    "highlight": {
                        "type": "string",
                        "description": "a snippet of the indexed text, matches in <mark></mark>",
                    },
                    "document": DOCUMENT,
                },
                "required": ["_id", "score", "highlight", "document"],
            },
        },
        "nextOffset": {"type": "integer", "nullable": True},
    },
    "required": ["results", "nextOffset"],
}
