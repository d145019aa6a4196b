"""System checks for rules that span several settings (ids flowsite.E00x / W00x)."""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.checks.security import base as security_base
from django.core.checks.security import csrf as security_csrf
from django.core.checks.security import sessions as security_sessions
from django.test.utils import override_settings
from django.utils.module_loading import import_string


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


# Django's security checks look for its middleware by dotted path (`"...SecurityMiddleware" in
# settings.MIDDLEWARE`), so they would skip HSTS, SSL redirect, cookie and header checks with the
# subclasses of flowsite/middleware.py installed. The check below runs them again as if Django's
# own classes were there; settings.py silences security.W001-W003, which flowsite.W004-W006
# replace.
_DJANGO_MIDDLEWARE = (
    ("django.middleware.security.SecurityMiddleware", "flowsite.W004"),
    ("django.middleware.clickjacking.XFrameOptionsMiddleware", "flowsite.W005"),
    ("django.middleware.csrf.CsrfViewMiddleware", "flowsite.W006"),
    ("django.contrib.sessions.middleware.SessionMiddleware", None),
)
_MIDDLEWARE_GATED_CHECKS = (
    security_base.check_sts,
    security_base.check_sts_include_subdomains,
    security_base.check_sts_preload,
    security_base.check_content_type_nosniff,
    security_base.check_ssl_redirect,
    security_base.check_xframe_deny,
    security_base.check_referrer_policy,
    security_base.check_cross_origin_opener_policy,
    security_csrf.check_csrf_cookie_secure,
    security_sessions.check_session_cookie_secure,
    security_sessions.check_session_cookie_httponly,
)


def _canonical(path: str) -> str:
    """Return the dotted path of the Django middleware `path` subclasses, else `path`."""
    cls = import_string(path)
    for django_path, _ in _DJANGO_MIDDLEWARE:
        if isinstance(cls, type) and issubclass(cls, import_string(django_path)):
            return django_path
    return path


def _messages(checks) -> list:
    return [message for check in checks for message in check(None)]


@register(Tags.security, deploy=True)
def check_security_middleware(app_configs, **kwargs):
    canonical = [_canonical(path) for path in settings.MIDDLEWARE]
    problems = [
        Warning(
            f"No {django_path} (or subclass of it) in MIDDLEWARE: its protection is off.",
            hint="Keep flowsite.middleware's classes in MIDDLEWARE (flowsite/settings.py).",
            id=check_id,
        )
        for django_path, check_id in _DJANGO_MIDDLEWARE
        if check_id and django_path not in canonical
    ]
    already = {message.id for message in _messages(_MIDDLEWARE_GATED_CHECKS)}
    with override_settings(MIDDLEWARE=canonical):
        problems += [m for m in _messages(_MIDDLEWARE_GATED_CHECKS) if m.id not in already]
    return problems
