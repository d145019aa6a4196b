"""Read one node's input values (strings, numbers, booleans, JSON) the way Flowise stores them."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .errors import FlowValidationError, node_label


def is_empty(value: Any) -> bool:
    """Return True for values Flowise writes when an input is not set ("", None, [], {})."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, list | tuple | Mapping):
        return len(value) == 0
    return False


def thaw(value: Any) -> Any:
    """Return a plain dict/list copy of a (possibly frozen) JSON-like value."""
    if isinstance(value, Mapping):
        return {str(k): thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


class InputReader:
    """Typed access to one node's inputs; every problem names the node and the input."""

    def __init__(self, node_id: str, node_type: str, inputs: Mapping[str, Any]):
        self.node_id = node_id
        self.node_type = node_type
        self.inputs = inputs

    def error(self, name: str, problem: str, *, code: str = "invalid_flow") -> FlowValidationError:
        """Build the validation error for input `name`."""
        label = node_label(self.node_id, self.node_type)
        return FlowValidationError(
            f'{label}: input "{name}" {problem}', code=code, node_id=self.node_id
        )

    def missing(self, name: str) -> FlowValidationError:
        """Build the error for a required input that is empty."""
        label = node_label(self.node_id, self.node_type)
        return FlowValidationError(
            f'{label}: required input "{name}" is empty', code="missing_input", node_id=self.node_id
        )

    def raw(self, name: str) -> Any:
        """Return the input value, or None when it is not set."""
        value = self.inputs.get(name)
        return None if is_empty(value) else value

    def text(self, name: str, default: str | None = None) -> str | None:
        """Return a string input (numbers are converted), or `default` when not set."""
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        if isinstance(value, str):
            return value
        raise self.error(name, f"must be text, got {type(value).__name__}")

    def required_text(self, name: str) -> str:
        """Return a string input that must be set."""
        value = self.text(name)
        if value is None:
            raise self.missing(name)
        return value

    def number(self, name: str, default: float | None = None) -> float | None:
        """Return a number input ("0.7" or 0.7), or `default` when not set."""
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool):
            raise self.error(name, f"must be a number, got {value!r}")
        try:
            number = float(value.strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            raise self.error(name, f"must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise self.error(name, f"must be a finite number, got {value!r}")
        return number

    def integer(self, name: str, default: int | None = None, *, minimum: int = 0) -> int | None:
        """Return a whole-number input ("4", 4 or 4.0), or `default` when not set."""
        number = self.number(name)
        if number is None:
            return default
        if not number.is_integer():
            raise self.error(name, f"must be a whole number, got {self.inputs.get(name)!r}")
        if number < minimum:
            raise self.error(name, f"must be at least {minimum}, got {self.inputs.get(name)!r}")
        return int(number)

    def boolean(self, name: str, default: bool) -> bool:
        """Return a boolean input (true/false or "true"/"false"), or `default` when not set."""
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise self.error(name, f"must be true or false, got {value!r}")

    def json_object(self, name: str) -> dict[str, Any]:
        """Return a JSON-object input (a JSON string or an already-decoded object); {} if unset."""
        value = self.raw(name)
        if value is None:
            return {}
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise self.error(name, f"is not valid JSON ({exc.msg})") from None
        if not isinstance(value, Mapping):
            raise self.error(name, "must be a JSON object")
        return thaw(value)  # type: ignore[no-any-return]
