"""Toxic types, their attributes and the validation of API input (stricter than the reference).

Everything here is pure logic: no sockets. The proxy (``_link``) interprets the validated toxics.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "STREAMS",
    "TOXIC_TYPES",
    "ApiError",
    "Toxic",
    "parse_toxic",
    "update_toxic",
]

STREAMS: Final = ("upstream", "downstream")

#: Attribute names of every toxic type, in the order the reference serialises them.
TOXIC_TYPES: Final[Mapping[str, tuple[str, ...]]] = {
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "slicer": ("average_size", "size_variation", "delay"),
    "limit_data": ("bytes",),
    "noop": (),
}

# Upper bound for any attribute: Go int64, and a sanity cap for times (about 3 years in ms).
_MAX_ATTRIBUTE: Final = 2**53


class ApiError(Exception):
    """An HTTP API error: rendered as ``{"error": message, "status": status}``."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


@dataclass(kw_only=True, slots=True)
class Toxic:
    """One toxic of a proxy (mutable: attributes and toxicity can be updated in place)."""

    name: str
    type: str
    stream: str
    toxicity: float = 1.0
    attributes: dict[str, int] = field(default_factory=dict)
    #: Bumped on every update so open links notice the change.
    generation: int = 0

    def to_json(self) -> dict[str, Any]:
        """The reference's JSON form of the toxic."""
        return {
            "attributes": dict(self.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
        }

    def draw(self, rng: random.Random) -> bool:
        """Whether the toxic applies to one (connection, stream): drawn once, by toxicity."""
        if self.toxicity >= 1.0:
            return True
        if self.toxicity <= 0.0:
            return False
        return rng.random() < self.toxicity


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _string_field(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(
            400, f"bad request body: field {key!r} must be a string, got {_type_name(value)}"
        )
    return value


def _toxicity(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(
            400,
            f"bad request body: field 'toxicity' must be a number, got {_type_name(value)}",
        )
    toxicity = float(value)
    if not (0.0 <= toxicity <= 1.0) or math.isnan(toxicity):
        raise ApiError(
            400, f"bad request body: toxicity must be between 0.0 and 1.0, got {toxicity}"
        )
    return toxicity


def _attributes(type_: str, value: object, base: Mapping[str, int]) -> dict[str, int]:
    allowed = TOXIC_TYPES[type_]
    result = {name: int(base.get(name, 0)) for name in allowed}
    if value is None:
        return result
    if not isinstance(value, dict):
        raise ApiError(
            400,
            f"bad request body: field 'attributes' must be an object, got {_type_name(value)}",
        )
    for name, raw in value.items():
        if name not in allowed:
            allowed_text = ", ".join(allowed) if allowed else "none"
            raise ApiError(
                400,
                f"bad request body: unknown attribute {name!r} for toxic type {type_!r} "
                f"(allowed: {allowed_text})",
            )
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ApiError(
                400,
                f"bad request body: attribute {name!r} of toxic type {type_!r} must be an "
                f"integer, got {_type_name(raw)} {raw!r}",
            )
        if raw < 0:
            raise ApiError(
                400,
                f"bad request body: attribute {name!r} of toxic type {type_!r} must be >= 0, "
                f"got {raw}",
            )
        if raw > _MAX_ATTRIBUTE:
            raise ApiError(
                400,
                f"bad request body: attribute {name!r} of toxic type {type_!r} must be "
                f"<= {_MAX_ATTRIBUTE}, got {raw}",
            )
        result[name] = raw
    _validate(type_, result)
    return result


def _validate(type_: str, attributes: Mapping[str, int]) -> None:
    if type_ == "bandwidth" and attributes["rate"] <= 0:
        raise ApiError(
            400,
            "bad request body: bandwidth attribute 'rate' (KB/s) must be >= 1, got "
            f"{attributes['rate']}; to stop data entirely use a 'timeout' toxic",
        )
    if type_ == "slicer":
        average = attributes["average_size"]
        variation = attributes["size_variation"]
        if average <= 0:
            raise ApiError(
                400,
                f"bad request body: slicer attribute 'average_size' must be >= 1, got {average}",
            )
        if variation > average:
            raise ApiError(
                400,
                "bad request body: slicer attribute 'size_variation' must be <= "
                f"'average_size' ({average}), got {variation}",
            )


def parse_toxic(body: object) -> Toxic:
    """Validate a ``POST /proxies/{p}/toxics`` body into a :class:`Toxic` (raises ApiError)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"bad request body: expected a JSON object, got {_type_name(body)}")
    stream = _string_field(body, "stream") or "downstream"
    if stream not in STREAMS:
        raise ApiError(400, "stream was invalid, can be either upstream or downstream")
    type_ = _string_field(body, "type") or ""
    name = _string_field(body, "name") or f"{type_}_{stream}"
    if type_ not in TOXIC_TYPES:
        raise ApiError(400, "invalid toxic type")
    toxicity = _toxicity(body["toxicity"]) if body.get("toxicity") is not None else 1.0
    attributes = _attributes(type_, body.get("attributes"), {})
    if "attributes" not in body or body.get("attributes") is None:
        _validate(type_, attributes)
    return Toxic(name=name, type=type_, stream=stream, toxicity=toxicity, attributes=attributes)


def update_toxic(toxic: Toxic, body: object) -> tuple[dict[str, int], float]:
    """Validate an update body against ``toxic``: the merged attributes and toxicity."""
    if not isinstance(body, dict):
        raise ApiError(400, f"bad request body: expected a JSON object, got {_type_name(body)}")
    toxicity = toxic.toxicity
    if body.get("toxicity") is not None:
        toxicity = _toxicity(body["toxicity"])
    attributes = _attributes(toxic.type, body.get("attributes"), toxic.attributes)
    return attributes, toxicity
