"""API keys in the Django admin: create (the key is shown once), name, scope, revoke."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from generation.access import ALL_SCOPES, api_key_create, forget_auth_state
from generation.models import ApiKey


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=[(scope, scope) for scope in ALL_SCOPES],
        widget=forms.CheckboxSelectMultiple,
        initial=["generate", "read"],
    )

    class Meta:
        model = ApiKey
        fields = ["name", "scopes", "requests_per_minute", "max_queued_tasks"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = ("name", "prefix", "scopes", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix")
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
        else:
            # Keys are made by the service so the secret is generated and hashed in one place.
            key, text = api_key_create(
                name=obj.name,
                scopes=list(form.cleaned_data["scopes"]),
                requests_per_minute=obj.requests_per_minute,
                max_queued_tasks=obj.max_queued_tasks,
            )
            obj.pk = key.pk
            obj.prefix = key.prefix
            self.message_user(
                request,
                f"The new key is {text} — copy it now, it is not stored and cannot be shown again.",
                messages.WARNING,
            )
        forget_auth_state()

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        forget_auth_state()
        self.message_user(request, f"Revoked {count} keys.", messages.SUCCESS)
