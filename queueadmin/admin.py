"""Admin entry of the queue dashboard: the Dashboard changelist redirects to /admin/queues/."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.http import HttpResponseRedirect
from django.urls import reverse

from queueadmin.models import Dashboard


@admin.register(Dashboard)
class DashboardAdmin(admin.ModelAdmin):
    """Shown on the admin index to users with `queueadmin.view_dashboard` while it is enabled."""

    def has_module_permission(self, request) -> bool:
        return settings.ENABLE_QUEUE_DASHBOARD and super().has_module_permission(request)

    def has_view_permission(self, request, obj=None) -> bool:
        return settings.ENABLE_QUEUE_DASHBOARD and super().has_view_permission(request, obj)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def changelist_view(self, request, extra_context=None):
        return HttpResponseRedirect(reverse("queueadmin:queueadmin_dashboard"))
