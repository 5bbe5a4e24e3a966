"""Find every payload file a record (or a part of it) points at."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from pydantic import BaseModel, ValidationError

from any2capins.schemas._record import Conditions, PayloadRef

_REF_KEYS = frozenset(PayloadRef.model_fields)


def payload_refs(value: Any, path: str = "") -> list[tuple[str, PayloadRef]]:
    """Every PayloadRef inside ``value`` with a readable path (``depth.frames``,
    ``motion_energy.heatmap``), depth first, in field order.

    Walks pydantic models, lists, and plain dicts (a summary as JSON): a dict with exactly
    the PayloadRef fields is one. Third-party condition types keep their summary as JSON
    text in ``Conditions.extra``; those are parsed and walked too, so their payloads are
    exported and shown like the built-ins'.
    """
    found: list[tuple[str, PayloadRef]] = []

    def join(name: str) -> str:
        return f"{path}.{name}" if path else name

    if isinstance(value, PayloadRef):
        found.append((path, value))
    elif isinstance(value, Conditions):
        for name in type(value).model_fields:
            if name != "extra":
                found.extend(payload_refs(getattr(value, name), join(name)))
        for name, text in sorted(value.extra.items()):
            with contextlib.suppress(ValueError):
                found.extend(payload_refs(json.loads(text), join(name)))
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            found.extend(payload_refs(getattr(value, name), join(name)))
    elif isinstance(value, dict):
        if set(value) == _REF_KEYS:
            with contextlib.suppress(ValidationError):
                found.append((path, PayloadRef.model_validate(value)))
                return found
        for k, v in value.items():
            found.extend(payload_refs(v, join(str(k))))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found.extend(payload_refs(v, f"{path}[{i}]"))
    return found
