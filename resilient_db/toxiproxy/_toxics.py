"""Toxic types, their attributes and the validation of API input.

Everything here is pure logic: no sockets. By default input is read the way the reference
(Toxiproxy 2.12) reads it: unknown attribute keys are ignored, ``toxicity`` is not
range-checked, negative times act as zero, ``bandwidth`` ``rate`` <= 0 stalls the stream, a
stream name matches in any case and is echoed as sent. Only input that crashes the reference
is a 400 (``slicer`` ``average_size`` <= 0, ``size_variation`` outside 0..``average_size``), as
is a known field of the wrong JSON type. ``strict=True`` also rejects likely mistakes (see
:data:`STRICT_CHECKS`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "STREAMS",
    "STRICT_CHECKS",
    "TOXIC_TYPES",
    "ApiError",
    "Toxic",
    "parse_toxic",
    "type_name",
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

#: What ``strict`` mode rejects with a 400 on top of the reference's own errors.
STRICT_CHECKS: Final = (
    "bandwidth rate <= 0 (the reference stalls the stream)",
    "a stream name not in lower case",
    "toxicity outside 0.0..1.0",
    "negative attributes (latency, jitter, delay, timeout, bytes)",
    "unknown attribute keys",
    "listen/upstream addresses that are not host:port with a port 0..65535",
    "duplicate proxy names in one populate array",
)

_INT64: Final = 2**63 - 1


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
    #: The stream as sent by the client (``"UPSTREAM"`` stays so); see :attr:`direction`.
    stream: str
    toxicity: float = 1.0
    attributes: dict[str, int] = field(default_factory=dict)

    @property
    def direction(self) -> str:
        """``"upstream"`` or ``"downstream"`` (the stream, case folded)."""
        return self.stream.lower()

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


def type_name(value: object) -> str:
    """The JSON type name of a decoded value (for error messages)."""
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


def _bad(message: str) -> ApiError:
    return ApiError(400, f"bad request body: {message}")


def _string_field(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"field {key!r} must be a string, got {type_name(value)}")
    return value


def _toxicity(value: object, *, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise _bad(f"field 'toxicity' must be a number, got {type_name(value)}")
    toxicity = float(value)
    if strict and not 0.0 <= toxicity <= 1.0:
        raise _bad(f"toxicity must be between 0.0 and 1.0 (strict mode), got {toxicity}")
    return toxicity


def _integer(type_: str, name: str, raw: object, *, strict: bool) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise _bad(
            f"attribute {name!r} of toxic type {type_!r} must be an integer, "
            f"got {type_name(raw)} {raw!r}"
        )
    if not -_INT64 - 1 <= raw <= _INT64:
        raise _bad(f"attribute {name!r} of toxic type {type_!r} must fit in int64, got {raw}")
    if strict and raw < 0:
        raise _bad(f"attribute {name!r} of toxic type {type_!r} must be >= 0 (strict), got {raw}")
    return raw


def _attributes(
    type_: str, value: object, base: Mapping[str, int], *, strict: bool
) -> dict[str, int]:
    allowed = TOXIC_TYPES[type_]
    result = {name: int(base.get(name, 0)) for name in allowed}
    if value is not None and not isinstance(value, dict):
        raise _bad(f"field 'attributes' must be an object, got {type_name(value)}")
    for name, raw in (value or {}).items():
        if name not in allowed:
            if strict:
                allowed_text = ", ".join(allowed) if allowed else "none"
                raise _bad(
                    f"unknown attribute {name!r} for toxic type {type_!r} "
                    f"(allowed: {allowed_text}; strict mode)"
                )
            continue  # the reference ignores unknown keys
        if raw is not None:  # JSON null leaves the value as it was
            result[name] = _integer(type_, name, raw, strict=strict)
    _validate(type_, result, strict=strict)
    return result


def _validate(type_: str, attributes: Mapping[str, int], *, strict: bool) -> None:
    if type_ == "slicer":  # these crash the reference's whole server: always a 400
        average = attributes["average_size"]
        variation = attributes["size_variation"]
        if average <= 0:
            raise _bad(f"slicer attribute 'average_size' must be >= 1, got {average}")
        if not 0 <= variation <= average:
            raise _bad(
                "slicer attribute 'size_variation' must be between 0 and 'average_size' "
                f"({average}), got {variation}"
            )
    if strict and type_ == "bandwidth" and attributes["rate"] <= 0:
        raise _bad(
            "bandwidth attribute 'rate' (KB/s) must be >= 1 (strict mode), got "
            f"{attributes['rate']}; to stop data entirely use a 'timeout' toxic"
        )


def parse_toxic(body: object, *, strict: bool = False) -> Toxic:
    """Validate a ``POST /proxies/{p}/toxics`` body into a :class:`Toxic` (raises ApiError)."""
    if not isinstance(body, dict):
        raise _bad(f"expected a JSON object, got {type_name(body)}")
    stream = _string_field(body, "stream") or "downstream"
    if stream.lower() not in STREAMS or (strict and stream not in STREAMS):
        raise ApiError(400, "stream was invalid, can be either upstream or downstream")
    type_ = _string_field(body, "type") or ""
    name = _string_field(body, "name") or f"{type_}_{stream}"
    if type_ not in TOXIC_TYPES:
        raise ApiError(400, "invalid toxic type")
    raw_toxicity = body.get("toxicity")
    toxicity = 1.0 if raw_toxicity is None else _toxicity(raw_toxicity, strict=strict)
    attributes = _attributes(type_, body.get("attributes"), {}, strict=strict)
    return Toxic(name=name, type=type_, stream=stream, toxicity=toxicity, attributes=attributes)


def update_toxic(
    toxic: Toxic, body: object, *, strict: bool = False
) -> tuple[dict[str, int], float]:
    """Validate an update body against ``toxic``: the merged attributes and toxicity."""
    if not isinstance(body, dict):
        raise _bad(f"expected a JSON object, got {type_name(body)}")
    raw_toxicity = body.get("toxicity")
    toxicity = toxic.toxicity if raw_toxicity is None else _toxicity(raw_toxicity, strict=strict)
    attributes = _attributes(toxic.type, body.get("attributes"), toxic.attributes, strict=strict)
    return attributes, toxicity
