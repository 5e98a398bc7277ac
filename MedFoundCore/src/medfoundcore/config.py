"""Shared handling of the dataclass configs stored in model cards and training checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from .errors import InputError

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any], what: str) -> T:
    """Build config ``cls`` from ``data``, refusing unknown keys (a typo must not be silently ignored)."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{what} config: unknown keys {unknown}; known keys: {sorted(known)}")
    return cls(**data)
