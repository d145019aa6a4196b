"""Engine test fixtures: the OpenAI-compatible stub server and the example flow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .openai_stub import openai_stub, refused_base_url

__all__ = ["example_chatflow", "openai_stub", "refused_base_url"]

DATA = Path(__file__).parent / "data"


@pytest.fixture
def example_chatflow() -> dict[str, Any]:
    """Return the real Flowise export (chatOpenAI + promptTemplate + llmChain)."""
    return json.loads((DATA / "flowise-prompt-llmchain.json").read_text())  # type: ignore[no-any-return]
