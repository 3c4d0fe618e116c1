"""Topics over HTTP: list, publish, read a range, commit an offset (PROTOCOL.md section 7).

Thin shells over `topics.requests`, the same functions the topics websocket runs, so access
rules, idempotent publishing and never-backwards commits are the same. Every request needs
the `topics` scope. Offsets are per (topic, user, device); `device` defaults to "http".
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.schema import TENANT_PARAM
from api.views import int_param
from core.errors import DataGateError, ErrorCode
from topics import selectors
from topics.requests import (
    request_connect_user,
    request_messages_publish,
    request_offset_commit,
    request_subscribe,
    request_topics_list,
)
from topics.services import Publication

DEFAULT_DEVICE = "http"
TOPIC_PARAM = OpenApiParameter(
    "topic",
    str,
    OpenApiParameter.PATH,
    description="topic name",
    examples=[OpenApiExample("news", value="news")],
)


class TopicSerializer(serializers.Serializer):
    name = serializers.CharField()
    scope = serializers.ChoiceField(choices=["global", "local"])
    owner = serializers.CharField(allow_null=True)
    pageSize = serializers.IntegerField()
    lastOffset = serializers.IntegerField()
    firstOffset = serializers.IntegerField(allow_null=True)
    messageCount = serializers.IntegerField()
    retentionDays = serializers.IntegerField(allow_null=True)
    retentionCount = serializers.IntegerField(allow_null=True)


class TopicListSerializer(serializers.Serializer):
    topics = TopicSerializer(many=True)


class PublishItemSerializer(serializers.Serializer):
    messageId = serializers.CharField(min_length=1, max_length=128, trim_whitespace=False)
    payload = serializers.JSONField(required=False, allow_null=True, default=None)


class PublishSerializer(serializers.Serializer):
    messages = PublishItemSerializer(many=True, allow_empty=False)
    device = serializers.CharField(
        min_length=1, max_length=128, required=False, default=DEFAULT_DEVICE
    )


class PublishedSerializer(serializers.Serializer):
    offsets = serializers.ListField(child=serializers.IntegerField())


class MessageSerializer(serializers.Serializer):
    offset = serializers.IntegerField()
    messageId = serializers.CharField()
    payload = serializers.JSONField(allow_null=True)
    publisher = serializers.CharField(allow_null=True)
    publishedAt = serializers.IntegerField()


class MessagePageSerializer(serializers.Serializer):
    messages = MessageSerializer(many=True)
    lastOffset = serializers.IntegerField()
    committed = serializers.IntegerField()
    next = serializers.IntegerField(allow_null=True)


class CommitSerializer(serializers.Serializer):
    offset = serializers.IntegerField(min_value=0)
    device = serializers.CharField(
        min_length=1, max_length=128, required=False, default=DEFAULT_DEVICE
    )


class CommittedSerializer(serializers.Serializer):
    committed = serializers.IntegerField()


def valid(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise DataGateError(ErrorCode.BAD_BODY, detail="expected a JSON object")
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


class TopicsView(APIView):
    read_scope = write_scope = "topics"


class TopicListView(TopicsView):
    @extend_schema(
        operation_id="topics_list",
        summary="Topics of the tenant the caller can see",
        parameters=[TENANT_PARAM],
        responses={200: TopicListSerializer},
    )
    def get(self, request: Request, tenant: str) -> Response:
        caller = request_connect_user(user=request.user, tenant_slug=tenant, device=DEFAULT_DEVICE)
        return Response({"topics": request_topics_list(caller=caller)})


class TopicMessagesView(TopicsView):
    @extend_schema(
        operation_id="topics_read",
        summary="Read a range of a topic's messages, in offset order",
        parameters=[
            TENANT_PARAM,
            TOPIC_PARAM,
            OpenApiParameter("start", int, required=False, description="first offset (1)"),
            OpenApiParameter("end", int, required=False, description="last offset wanted"),
            OpenApiParameter("limit", int, required=False, description="page size"),
            OpenApiParameter("device", str, required=False, description="for `committed`"),
        ],
        responses={200: MessagePageSerializer},
    )
    def get(self, request: Request, tenant: str, topic: str) -> Response:
        device = request.query_params.get("device", DEFAULT_DEVICE)
        if not 1 <= len(device) <= 128:
            raise DataGateError(ErrorCode.BAD_PARAMETER, name="device", detail="1..128 chars")
        caller = request_connect_user(user=request.user, tenant_slug=tenant, device=device)
        start = int_param(request, "start", default=1, minimum=1)
        end = request.query_params.get("end")
        up_to = int_param(request, "end", default=0, minimum=1) if end is not None else None
        limit = int_param(request, "limit", default=100, minimum=1, maximum=1000)
        topic_id = request_subscribe(caller=caller, name=topic)
        found = selectors.messages_read(
            topic_id=topic_id, from_offset=start, limit=limit, up_to=up_to
        )
        if found is None:
            raise DataGateError(ErrorCode.TOPIC_NOT_FOUND, topic=topic)
        messages, last = found
        reached = messages[-1].offset if messages else start - 1
        ceiling = last if up_to is None else min(up_to, last)
        return Response(
            {
                "messages": [m.to_wire() for m in messages],
                "lastOffset": last,
                "committed": selectors.committed_offset(
                    topic_id=topic_id, user_id=caller.user_id, device=device
                ),
                "next": reached + 1 if len(messages) == limit and reached < ceiling else None,
            }
        )

    @extend_schema(
        operation_id="topics_publish",
        summary="Publish messages (idempotent per messageId)",
        parameters=[TENANT_PARAM, TOPIC_PARAM],
        request=PublishSerializer,
        responses={200: PublishedSerializer},
    )
    def post(self, request: Request, tenant: str, topic: str) -> Response:
        body = valid(PublishSerializer, request.data)
        limit = int(settings.DATAGATE.get("TOPIC_MAX_PUBLISH", 1000))
        if len(body["messages"]) > limit:
            raise DataGateError(ErrorCode.BAD_BODY, detail=f"at most {limit} messages")
        caller = request_connect_user(user=request.user, tenant_slug=tenant, device=body["device"])
        publications = [
            Publication(message_id=item["messageId"], payload=item.get("payload"))
            for item in body["messages"]
        ]
        offsets, _ = request_messages_publish(caller=caller, name=topic, messages=publications)
        return Response({"offsets": offsets})


class TopicCommitView(TopicsView):
    @extend_schema(
        operation_id="topics_commit",
        summary="Commit an offset for (user, device); it never moves backwards",
        parameters=[TENANT_PARAM, TOPIC_PARAM],
        request=CommitSerializer,
        responses={200: CommittedSerializer},
    )
    def post(self, request: Request, tenant: str, topic: str) -> Response:
        body = valid(CommitSerializer, request.data)
        caller = request_connect_user(user=request.user, tenant_slug=tenant, device=body["device"])
        committed = request_offset_commit(
            caller=caller, name=topic, topic_id=None, offset=body["offset"]
        )
        return Response({"committed": committed})
