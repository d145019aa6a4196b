"""EngineError hierarchy with stable `code` strings for flow, prompt and provider failures."""

from __future__ import annotations


class EngineError(Exception):
    """A chatflow could not be parsed or run; `code` is stable, `message` is for humans."""

    default_code = "engine_error"

    def __init__(self, message: str, *, code: str | None = None, node_id: str | None = None):
        super().__init__(message)
        self.code: str = code or self.default_code
        self.message: str = message
        self.node_id: str | None = node_id

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class FlowValidationError(EngineError):
    """flowData is not a chatflow this engine can run (bad JSON, unknown node, cycle, ...)."""

    default_code = "invalid_flow"


class PromptError(EngineError):
    """A prompt template could not be rendered (e.g. a variable has no value)."""

    default_code = "prompt_error"


class ProviderError(EngineError):
    """The model server failed; `http_status` is what the API should answer (502 or 504)."""

    default_code = "provider_bad_response"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        node_id: str | None = None,
        http_status: int | None = None,
    ):
        super().__init__(message, code=code, node_id=node_id)
        self.http_status: int = http_status or (504 if self.code == "provider_timeout" else 502)


def node_label(node_id: str, node_type: str) -> str:
    """Return how messages name a node: `llmChain_0 (llmChain)`."""
    return f"Node {node_id} ({node_type})"
