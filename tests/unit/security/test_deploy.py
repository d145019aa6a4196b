"""`check --deploy` is clean with the production settings of README "Security"; TLS behaviour."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

ROOT = Path(__file__).resolve().parents[3]

# The production environment README "Security" documents (behind a TLS proxy).
PRODUCTION_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": "Zq3-8vN_pL0xR7mK2bW9cT4yH6jF1sD5gA8eU3iO0nV7rX2lQ9wE4tY6uP1zC5kM",
    "ALLOWED_HOSTS": "flowsite.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://flowsite.example.com",
    "TRUST_PROXY": "true",
    "NUMBER_OF_PROXIES": "1",
    "SECURE_SSL_REDIRECT": "true",
    "SESSION_COOKIE_SECURE": "true",
    "CSRF_COOKIE_SECURE": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
}


def _check_deploy(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "SECURE_"))}
    base.update(
        {
            "DJANGO_SETTINGS_MODULE": "flowsite.settings",
            "FLOWSITE_HOME": str(tmp_path),
            "DEBUG": "false",
        }
    )
    base.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_deploy_is_clean_with_the_production_settings(tmp_path):
    result = _check_deploy(tmp_path, **PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_warns_about_the_development_defaults(tmp_path):
    result = _check_deploy(tmp_path, SECRET_KEY=PRODUCTION_ENV["SECRET_KEY"])
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr


def test_check_deploy_warns_about_ssl_redirect_without_a_trusted_proxy(tmp_path):
    env = {**PRODUCTION_ENV, "TRUST_PROXY": "false"}
    result = _check_deploy(tmp_path, **env)
    assert "flowsite.W003" in result.stderr


@pytest.fixture
def production(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SESSION_COOKIE_SECURE = True
    return settings


def test_plain_http_is_redirected_except_health_checks(production, db):
    client = Client()
    redirected = client.get("/api/v1/ping")
    assert redirected.status_code == 301
    assert redirected["Location"] == "https://testserver/api/v1/ping"
    assert client.get("/healthz").status_code == 200


def test_https_through_the_proxy_gets_hsts_and_security_headers(production, db):
    response = Client().get("/api/v1/ping", headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 200
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
