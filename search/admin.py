from typing import Any

from django import forms
from django.contrib import admin

from search.models import SearchIndex
from search.services import fields_validate, search_index_configure, search_index_remove


class SearchIndexForm(forms.ModelForm):
    class Meta:
        model = SearchIndex
        fields = ["collection", "fields"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        try:
            cleaned["fields"] = fields_validate(cleaned.get("fields"))
        except ValueError as problem:
            self.add_error("fields", str(problem))
        return cleaned


@admin.register(SearchIndex)
class SearchIndexAdmin(admin.ModelAdmin):
    form = SearchIndexForm
    list_display = ["collection", "fields", "updated_at"]
    list_select_related = ["collection__tenant"]
    search_fields = ["collection__name", "collection__tenant__slug"]

    def save_model(self, request: Any, obj: SearchIndex, form: Any, change: bool) -> None:
        # Through the service: the index is rebuilt for the new fields under the write lock.
        saved = search_index_configure(collection_id=obj.collection_id, fields=obj.fields)
        obj.pk = saved.pk

    def delete_model(self, request: Any, obj: SearchIndex) -> None:
        search_index_remove(collection_id=obj.collection_id)

    def delete_queryset(self, request: Any, queryset: Any) -> None:
        for index in queryset:
            search_index_remove(collection_id=index.collection_id)
