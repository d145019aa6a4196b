"""What the web process loads: model-server client code only where a model is called."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import sys
import django
django.setup()
import flowsite.asgi, flowsite.urls, predictions.api.predict, predictions.services
print("loaded:", "aiohttp" in sys.modules)
from predictions import clients
import asyncio
async def session():
    await clients.get_http_client().close()
asyncio.run(session())
print("loaded:", "aiohttp" in sys.modules)
"""


def test_the_web_process_imports_aiohttp_only_when_it_calls_a_model() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "flowsite.settings", "MODE": "queue"}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True
    )

    assert probe.returncode == 0, probe.stderr
    # 7 MB of a queue-mode web process that never calls a model (idle RSS target: 120 MB).
    loaded = [line for line in probe.stdout.splitlines() if line.startswith("loaded:")]
    assert loaded == ["loaded: False", "loaded: True"]
