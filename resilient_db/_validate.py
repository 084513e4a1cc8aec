"""One family of validators for every option resilient_db accepts (floor 1, beside _errors).

Every check raises :class:`~resilient_db.ConfigurationError` (or its
:class:`~resilient_db.ConfigurationTypeError` subclass, also a ``TypeError``, for a value of
the wrong type or an option that does not exist) with one message format::

    Owner(name=value) must be <constraint>; fix: <remedy>

``Owner`` is the class or function the caller configured (``RetryBudget``,
``create_async_engine``, ``Classifier.with_rules``), ``name=value`` the offending keyword as
it was passed (``repr`` of the value, or ``...`` when the value is too large to show), the
constraint says what is accepted and the remedy what to write instead, so the first line of
the error is enough to fix the call. The checks return the value (normalised, e.g. an
``int`` passed where a float is wanted stays an ``int``) so a constructor can write
``self.x = check_number("Owner", "x", x, min=0)``. Use :func:`config_error` for a
constraint the helpers do not cover, keeping the same wording.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from typing import Final, TypeVar

from resilient_db._errors import ConfigurationError, ConfigurationTypeError

__all__ = [
    "check_bool",
    "check_callable",
    "check_callables",
    "check_choice",
    "check_int",
    "check_number",
    "check_text",
    "check_type",
    "config_error",
    "did_you_mean",
    "unknown_option",
]

T = TypeVar("T")

_MAX_SHOWN: Final = 80
_ELIDED: Final = "..."


def _shown(value: object) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _MAX_SHOWN else _ELIDED


def config_error(
    owner: str,
    name: str,
    value: object,
    must: str,
    fix: str,
    *,
    wrong_type: bool = False,
    shown: str | None = None,
) -> ConfigurationError:
    """The error for ``owner(name=value)``: "… must be ``must``; fix: ``fix``".

    ``must`` is the constraint without the leading "must be"; ``wrong_type`` makes it a
    :class:`ConfigurationTypeError`; ``shown`` replaces the rendered value (e.g. ``"..."``).
    Returned, not raised, so the caller writes ``raise config_error(...)`` (or ``from``).
    """
    cls = ConfigurationTypeError if wrong_type else ConfigurationError
    rendered = _shown(value) if shown is None else shown
    return cls(f"{owner}({name}={rendered}) must be {must}; fix: {fix}")


def did_you_mean(word: str, known: Iterable[str]) -> str | None:
    """The closest of ``known`` to ``word`` (difflib), or ``None`` when none is close."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return close[0] if close else None


def unknown_option(owner: str, name: str, known: Iterable[str]) -> ConfigurationTypeError:
    """The error for a keyword ``owner`` does not take, with a did-you-mean suggestion."""
    names = sorted(known)
    best = did_you_mean(name, names)
    hint = f"; did you mean {best!r}?" if best else ""
    fix = f"rename it to {best!r}" if best else f"use one of: {', '.join(names)}"
    return ConfigurationTypeError(
        f"{owner}({name}=...) must be a known option (unknown option {name!r}{hint}); fix: {fix}"
    )


def check_number(
    owner: str,
    name: str,
    value: object,
    *,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    integer: bool = False,
    allow_none: bool = False,
    unit: str = "",
    fix: str | None = None,
) -> float | None:
    """``value`` if it is a finite number (an ``int`` when ``integer``) within the bounds.

    ``min``/``max`` are inclusive unless ``min_open``/``max_open``; ``bool`` is never a
    number; ``None`` passes only with ``allow_none``. ``unit`` (e.g. ``"seconds"``) is named
    in the message.
    """
    if value is None and allow_none:
        return None
    kind = "an integer" if integer else "a finite number"
    if unit:
        kind = f"{kind} of {unit}"
    bounds = []
    if min is not None:
        bounds.append(f"{'>' if min_open else '>='} {min:g}")
    if max is not None:
        bounds.append(f"{'<' if max_open else '<='} {max:g}")
    must = " and ".join([kind + (" " + bounds[0] if bounds else ""), *bounds[1:]])
    if allow_none:
        must += " or None"
    remedy = fix or (
        f"pass a number such as {_example(min, max, integer)}"
        + (" (or None to disable it)" if allow_none else "")
    )
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        raise config_error(owner, name, value, must, remedy, wrong_type=True)
    number = float(value)
    if not math.isfinite(number):
        raise config_error(owner, name, value, must, remedy)
    if min is not None and (number <= min if min_open else number < min):
        raise config_error(owner, name, value, must, remedy)
    if max is not None and (number >= max if max_open else number > max):
        raise config_error(owner, name, value, must, remedy)
    return value


def _example(low: float | None, high: float | None, integer: bool) -> str:
    """A value inside the bounds, for the default remedy."""
    if low is not None and high is not None:
        mid = (low + high) / 2
        return str(math.ceil(mid)) if integer else f"{mid:g}"
    if low is not None:
        return str(math.floor(low) + 1) if integer else f"{low + 1:g}"
    if high is not None:
        return str(math.ceil(high) - 1) if integer else f"{high - 1:g}"
    return "1"


def check_int(
    owner: str,
    name: str,
    value: object,
    *,
    min: int | None = None,
    max: int | None = None,
    fix: str | None = None,
) -> int:
    """``value`` if it is an ``int`` (not a ``bool``) within ``min``..``max`` inclusive."""
    check_number(owner, name, value, min=min, max=max, integer=True, fix=fix)
    assert isinstance(value, int)
    return value


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def check_bool(owner: str, name: str, value: object) -> bool:
    """``value`` if it is ``True`` or ``False`` (not merely truthy)."""
    if not isinstance(value, bool):
        raise config_error(
            owner,
            name,
            value,
            "True or False",
            f"pass {name}=True or {name}=False",
            wrong_type=True,
        )
    return value


def check_text(
    owner: str, name: str, value: object, *, allow_empty: bool = False, fix: str | None = None
) -> str:
    """``value`` if it is a string (non-empty unless ``allow_empty``)."""
    if not isinstance(value, str):
        raise config_error(
            owner, name, value, "a string", fix or f"pass {name} as a str", wrong_type=True
        )
    if not allow_empty and not value.strip():
        raise config_error(owner, name, value, "a non-empty string", fix or f"name the {name}")
    return value


def check_choice(
    owner: str, name: str, value: object, choices: Iterable[T], *, fix: str | None = None
) -> T:
    """The member of ``choices`` equal to ``value``, with a did-you-mean when it is none.

    Members of a ``StrEnum`` equal their value, so ``"commit"`` selects ``Phase.COMMIT``.
    """
    options = list(choices)
    for choice in options:
        try:
            if value == choice:
                return choice
        except Exception:  # an odd __eq__ is simply not a match
            continue
    texts = [str(c) for c in options]
    listed = ", ".join(map(repr, texts))
    best = did_you_mean(value, texts) if isinstance(value, str) else None
    raise config_error(
        owner,
        name,
        value,
        f"one of {listed}",
        fix or (f"use {best!r}" if best else f"use one of {listed}"),
    )


def check_callable(
    owner: str, name: str, value: object, *, allow_none: bool = False, fix: str | None = None
) -> Callable[..., object] | None:
    """``value`` if it is callable (or ``None`` with ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not callable(value):
        must = "callable" + (" or None" if allow_none else "")
        raise config_error(
            owner, name, value, must, fix or "pass a function (not its result)", wrong_type=True
        )
    return value


def check_callables(
    owner: str, name: str, value: Iterable[T], *, fix: str | None = None
) -> tuple[T, ...]:
    """``value`` as a tuple if it is an iterable (not a string) of callables, e.g. listeners.

    A single function passed where a list of them is wanted is refused too; an item that is
    not callable is named in the message as ``name=item``.
    """
    remedy = fix or f"pass a list of functions, e.g. {name}=[handler]"
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise config_error(owner, name, value, "an iterable of callables", remedy, wrong_type=True)
    items = tuple(value)
    for item in items:
        if not callable(item):
            raise config_error(
                owner, name, item, f"callable (each item of {name})", remedy, wrong_type=True
            )
    return items


def check_type(
    owner: str,
    name: str,
    value: object,
    types: type[T] | tuple[type[T], ...],
    *,
    allow_none: bool = False,
    what: str | None = None,
    fix: str | None = None,
) -> T | None:
    """``value`` if it is an instance of ``types`` (or ``None`` with ``allow_none``).

    ``what`` describes the expected value ("a RetryPolicy"); by default the type names.
    """
    if value is None and allow_none:
        return None
    if not isinstance(value, types):
        classes = types if isinstance(types, tuple) else (types,)
        names = " or ".join(c.__name__ for c in classes)
        must = what or f"{_article(names)} {names}"
        if allow_none and "None" not in must:
            must += " or None"
        raise config_error(
            owner, name, value, must, fix or f"pass {_article(names)} {names}", wrong_type=True
        )
    return value
