from __future__ import annotations

import importlib.resources

import resilient_db


def test_public_surface_is_sorted_and_importable() -> None:
    names = resilient_db.__all__

    def isort_style(name: str) -> tuple[int, str]:
        # ruff's RUF022 order: CONSTANTS, then Classes, then functions and dunders
        kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
        return (kind, name)

    assert list(names) == sorted(names, key=isort_style)
    for name in names:
        assert hasattr(resilient_db, name), name


def test_py_typed_marker_ships() -> None:
    assert importlib.resources.files("resilient_db").joinpath("py.typed").is_file()


def test_own_exceptions_share_one_root() -> None:
    for exc in (
        resilient_db.CircuitOpenError,
        resilient_db.CommitOutcomeUnknown,
        resilient_db.ConfigurationError,
    ):
        assert issubclass(exc, resilient_db.ResilientDBError)


def test_circuit_open_error_names_breaker_and_remedy() -> None:
    err = resilient_db.CircuitOpenError("orders-db", 1.5)
    text = str(err)
    assert "orders-db" in text
    assert "1.500s" in text
    assert err.retry_after == 1.5
