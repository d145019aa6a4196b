"""Pure async chatflow execution: no ORM, no django.conf.settings."""

from __future__ import annotations

from .errors import EngineError, FlowValidationError, PromptError, ProviderError
from .flow import Flow, parse_flow
from .nodes import NODE_TYPES
from .runner import run_flow
from .types import ChatTurn, Emit, EngineConfig, RunInput, RunResult

__all__ = [
    "NODE_TYPES",
    "ChatTurn",
    "Emit",
    "EngineConfig",
    "EngineError",
    "Flow",
    "FlowValidationError",
    "PromptError",
    "ProviderError",
    "RunInput",
    "RunResult",
    "parse_flow",
    "run_flow",
]
