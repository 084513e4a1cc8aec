"""One way to validate: the validators' message format, and bad values at public entry points."""

from __future__ import annotations

import math
import re

import pytest

import resilient_db
from resilient_db import ConfigurationError, ConfigurationTypeError, ResilientDBError
from resilient_db._validate import (
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_number,
    check_text,
    check_type,
    config_error,
    unknown_option,
)

FORMAT = re.compile(r"^\w[\w.]*\((\w+)=.+\) must be .+; fix: .+$", re.DOTALL)


def test_error_classes_fit_the_tree() -> None:
    assert issubclass(ConfigurationError, ResilientDBError)
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(ConfigurationTypeError, ConfigurationError)
    assert issubclass(ConfigurationTypeError, TypeError)
    assert resilient_db.ConfigurationTypeError is ConfigurationTypeError


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: check_number("P", "x", -1, min=0), ConfigurationError),
        (lambda: check_number("P", "x", 0, min=0, min_open=True), ConfigurationError),
        (lambda: check_number("P", "x", 2, max=1), ConfigurationError),
        (lambda: check_number("P", "x", math.nan), ConfigurationError),
        (lambda: check_number("P", "x", math.inf, min=0), ConfigurationError),
        (lambda: check_number("P", "x", "1"), ConfigurationTypeError),
        (lambda: check_number("P", "x", True), ConfigurationTypeError),
        (lambda: check_number("P", "x", None), ConfigurationTypeError),
        (lambda: check_int("P", "x", 1.5), ConfigurationTypeError),
        (lambda: check_int("P", "x", 0, min=1), ConfigurationError),
        (lambda: check_bool("P", "x", 1), ConfigurationTypeError),
        (lambda: check_text("P", "x", ""), ConfigurationError),
        (lambda: check_text("P", "x", 3), ConfigurationTypeError),
        (lambda: check_choice("P", "x", "fsat", ("fast", "smart")), ConfigurationError),
        (lambda: check_callable("P", "x", 3), ConfigurationTypeError),
        (lambda: check_type("P", "x", 3, str), ConfigurationTypeError),
    ],
)
def test_every_check_speaks_one_format(call: object, error: type[Exception]) -> None:
    assert callable(call)
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    match = FORMAT.match(message)
    assert match, message
    assert match.group(1) == "x"


def test_checks_return_good_values() -> None:
    assert check_number("P", "x", 0, min=0) == 0
    assert check_number("P", "x", None, allow_none=True) is None
    assert check_number("P", "x", 0.5, min=0, max=1, max_open=True) == 0.5
    assert check_int("P", "x", 3, min=1) == 3
    assert check_bool("P", "x", False) is False
    assert check_text("P", "x", "a") == "a"
    assert check_choice("P", "x", "fast", ("fast", "smart")) == "fast"
    assert check_callable("P", "x", print) is print
    assert check_callable("P", "x", None, allow_none=True) is None
    assert check_type("P", "x", "s", str) == "s"


def test_did_you_mean_and_unknown_options() -> None:
    with pytest.raises(ConfigurationError, match=r"fix: use 'fast'"):
        check_choice("P", "mode", "fsat", ("fast", "smart"))
    err = unknown_option("create_async_engine", "pool_sise", ["pool_size", "echo"])
    assert isinstance(err, TypeError)
    assert "unknown option 'pool_sise'; did you mean 'pool_size'" in str(err)
    assert FORMAT.match(str(err))
    far = unknown_option("X", "zzz", ["alpha", "beta"])
    assert "use one of: alpha, beta" in str(far)


def test_large_values_are_elided_and_bad_reprs_survive() -> None:
    class BadRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert "(x=...)" in str(config_error("P", "x", list(range(1000)), "short", "shorten it"))
    assert "(x=<BadRepr>)" in str(config_error("P", "x", BadRepr(), "nice", "fix it"))
