"""Typed environment readers that collect every problem and raise one ImproperlyConfigured."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass
class Env:
    """Read variables from a mapping and remember what was wrong with them."""

    source: Mapping[str, str] = field(default_factory=lambda: os.environ)
    problems: list[str] = field(default_factory=list)

    def _raw(self, name: str) -> str | None:
        value = self.source.get(name)
        if value is None:
            return None
        value = value.strip()
        return value if value != "" else None

    def problem(
        self, name: str, expected: str, example: str, got: str | None, secret: bool = False
    ):
        shown = "(hidden)" if secret else repr(got)
        self.problems.append(f"{name}: expected {expected}, e.g. {name}={example}; got {shown}")

    def is_set(self, name: str) -> bool:
        return self._raw(name) is not None

    def str(self, name: str, default: str = "", *, secret: bool = False) -> str:
        value = self._raw(name)
        return default if value is None else value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self._raw(name)
        if value is None:
            return default
        if value.lower() not in choices:
            self.problem(name, "one of " + "|".join(choices), choices[0], value)
            return default
        return value.lower()

    def int(
        self,
        name: str,
        default: int,
        *,
        min_value: int | None = None,
        max_value: int | None = None,
        example: str | None = None,
    ) -> int:
        value = self._raw(name)
        if value is None:
            return default
        bounds = []
        if min_value is not None:
            bounds.append(f">= {min_value}")
        if max_value is not None:
            bounds.append(f"<= {max_value}")
        expected = "a whole number" + (f" {' and '.join(bounds)}" if bounds else "")
        try:
            number = int(value)
        except ValueError:
            self.problem(name, expected, example or str(default), value)
            return default
        if (min_value is not None and number < min_value) or (
            max_value is not None and number > max_value
        ):
            self.problem(name, expected, example or str(default), value)
            return default
        return number

    def float(
        self, name: str, default: float, *, min_value: float = 0.0, example: str = ""
    ) -> float:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            number = min_value - 1
        if number < min_value:
            self.problem(name, f"a number >= {min_value}", example or str(default), value)
            return default
        return number

    def bool(self, name: str, default: bool) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        self.problem(name, "true or false", "true", value)
        return default

    def list(self, name: str, default: list[str]) -> list[str]:
        value = self._raw(name)
        if value is None:
            return list(default)
        return [item.strip() for item in value.split(",") if item.strip()]

    def url(
        self,
        name: str,
        default: str,
        *,
        schemes: tuple[str, ...],
        example: str,
        secret: bool = False,
    ) -> str:
        value = self._raw(name)
        if value is None:
            return default
        parsed = urlparse(value)
        if parsed.scheme not in schemes or not (parsed.netloc or parsed.path):
            self.problem(name, "a URL with scheme " + " or ".join(schemes), example, value, secret)
            return default
        return value

    def raise_if_problems(self) -> None:
        if self.problems:
            listing = "\n  - ".join(self.problems)
            raise ImproperlyConfigured(
                f"Invalid environment ({len(self.problems)}):\n  - {listing}"
            )
