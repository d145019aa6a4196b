"""Create the demo chatflow and the local admin user; safe to run twice."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from predictions import services
from predictions.demo import DEMO_CHATFLOW_ID, DEMO_CHATFLOW_NAME, demo_flow_data
from predictions.models import Chatflow


class Command(BaseCommand):
    help = "Create the demo chatflow and an admin user (ADMIN_USERNAME/ADMIN_PASSWORD) if missing."

    def add_arguments(self, parser):
        parser.add_argument("--no-admin", action="store_true", help="Do not create the admin user.")

    def handle(self, *args, **options):
        created = []
        if not Chatflow.objects.filter(id=DEMO_CHATFLOW_ID).exists():
            services.chatflow_create(
                id=DEMO_CHATFLOW_ID,
                name=DEMO_CHATFLOW_NAME,
                flow_data=demo_flow_data(),
                deployed=True,
                is_public=True,
                chatbot_config={
                    "title": "Flowsite demo",
                    "welcomeMessage": "Hi! I am the offline demo model.",
                },
            )
            created.append(f"demo chatflow {DEMO_CHATFLOW_ID}")
        if not options["no_admin"]:
            created.extend(self._admin())
        summary = "created " + ", ".join(created) if created else "nothing to do"
        self.stdout.write(self.style.SUCCESS(f"setup_demo: {summary}"))

    def _admin(self) -> list[str]:
        User = get_user_model()
        if User.objects.filter(username=settings.ADMIN_USERNAME).exists():
            return []
        password = settings.ADMIN_PASSWORD or secrets.token_urlsafe(12)
        User.objects.create_superuser(settings.ADMIN_USERNAME, settings.ADMIN_EMAIL, password)
        if not settings.ADMIN_PASSWORD:
            self.stdout.write(
                f"Admin user {settings.ADMIN_USERNAME!r} created with password {password!r} "
                "(shown once; set ADMIN_PASSWORD to choose one)."
            )
        return [f"admin user {settings.ADMIN_USERNAME}"]
