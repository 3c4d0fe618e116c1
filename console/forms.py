"""Forms of the console: filters (GET) and the document editor (POST)."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from replication.models import ID_MAX_LENGTH


class DocumentForm(forms.Form):
    doc_id = forms.CharField(label="Document id", max_length=ID_MAX_LENGTH, strip=False)
    body = forms.CharField(
        label="Fields (a JSON object)",
        widget=forms.Textarea(attrs={"rows": 16, "spellcheck": "false", "class": "code"}),
        initial="{}",
    )
    expected_revision = forms.IntegerField(widget=forms.HiddenInput, required=False, min_value=0)

    def clean_body(self) -> dict[str, Any]:
        raw = self.cleaned_data["body"]
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from exc
        except RecursionError:
            raise forms.ValidationError("The JSON nests too deep to read (DG-2009).") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("The fields must be one JSON object: {...}.")
        reserved = sorted(key for key in value if key.startswith("_"))
        if reserved:
            raise forms.ValidationError(
                f"Fields starting with '_' are reserved and not stored: {', '.join(reserved)}."
            )
        return value


class ReplicaFilterForm(forms.Form):
    q = forms.CharField(required=False, label="Search")
    collection = forms.CharField(required=False)
    user = forms.CharField(required=False)
    online = forms.ChoiceField(
        required=False, choices=[("", "any"), ("yes", "online"), ("no", "offline")]
    )
    behind = forms.BooleanField(required=False, label="Behind only")
    sort = forms.CharField(required=False)


class ErrorFilterForm(forms.Form):
    code = forms.CharField(required=False)
    replica = forms.IntegerField(required=False, min_value=1, label="Replica #")
    user = forms.CharField(required=False)
    collection = forms.CharField(required=False)
    since = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        label="From (UTC)",
    )
    until = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        label="To (UTC)",
    )


class DocumentSearchForm(forms.Form):
    q = forms.CharField(required=False, label="Full text", max_length=500)
    id = forms.CharField(required=False, label="Id contains", strip=False)
    field = forms.CharField(required=False, label="Field")
    value = forms.CharField(required=False, label="equals")
