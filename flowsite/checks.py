"""System checks for rules that span several settings (ids flowsite.E00x / W00x)."""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


@register(Tags.compatibility)
def check_queue_mode(app_configs, **kwargs):
    problems = []
    if settings.MODE == "queue" and settings.DATABASES["default"]["NAME"] == ":memory:":
        problems.append(
            Error(
                "MODE=queue needs a database that web and worker processes share.",
                hint="Set DATABASE_URL to a SQLite file or PostgreSQL.",
                id="flowsite.E001",
            )
        )
    return problems


@register(Tags.security, deploy=True)
def check_deploy(app_configs, **kwargs):
    problems = []
    if settings.MODE == "queue" and settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        problems.append(
            Warning(
                "SQLite in queue mode works on one host only.",
                hint="Use PostgreSQL (DATABASE_URL=postgres://...) for several hosts.",
                id="flowsite.W001",
            )
        )
    if settings.MODE == "queue" and settings.REDIS.tls and not settings.REDIS.verify:
        problems.append(
            Warning(
                "REDIS_TLS_VERIFY=false: Redis certificates are not verified.",
                hint="Give REDIS_CA instead.",
                id="flowsite.W002",
            )
        )
    if settings.SECURE_SSL_REDIRECT and not settings.TRUST_PROXY:
        problems.append(
            Warning(
                "SECURE_SSL_REDIRECT=true without TRUST_PROXY: behind a TLS proxy every request "
                "looks like plain HTTP and is redirected forever.",
                hint="Set TRUST_PROXY=true when a proxy terminates TLS and sets "
                "X-Forwarded-Proto (README 'Security').",
                id="flowsite.W003",
            )
        )
    return problems
