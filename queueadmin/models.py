"""Unmanaged, table-less Dashboard model: the admin entry and its 'view' permission."""

from __future__ import annotations

from django.db import models


class Dashboard(models.Model):
    """No rows, no table: gives the queue dashboard a place on the admin index and a permission.

    `queueadmin.view_dashboard` opens /admin/queues (superusers have it).
    """

    class Meta:
        managed = False
        default_permissions = ("view",)
        verbose_name = "queue dashboard"
        verbose_name_plural = "queue dashboard"

    def __str__(self) -> str:
        return "queue dashboard"
