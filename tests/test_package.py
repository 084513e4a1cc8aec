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


def test_every_exported_exception_derives_from_the_root() -> None:
    # The README's promise, over every public surface (the package, its proxy, its testing).
    import inspect

    import resilient_db.testing
    import resilient_db.toxiproxy

    found = []
    for module in (resilient_db, resilient_db.toxiproxy, resilient_db.testing):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                found.append(obj)
                assert issubclass(obj, resilient_db.ResilientDBError), f"{module.__name__}.{name}"
    assert resilient_db.ConfigurationTypeError in found


def test_every_stage_surface_lists_what_it_has() -> None:
    import importlib
    from pathlib import Path

    root = Path(resilient_db.__file__).parent
    stages = sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file())
    assert {"classify", "engine", "policies", "testing", "toxiproxy", "units"} <= set(stages)
    for stage in stages:
        module = importlib.import_module(f"resilient_db.{stage}")
        names = getattr(module, "__all__", None)
        assert names is not None, f"resilient_db.{stage} has no __all__"
        for name in names:
            assert hasattr(module, name), f"resilient_db.{stage}.{name}"


def test_the_testing_extra_brings_what_the_test_tooling_imports() -> None:
    import tomllib
    from pathlib import Path

    pyproject = Path(resilient_db.__file__).parent.parent / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    for extra in ("testing", "test"):
        names = {req.split(">")[0].split("[")[0].split("=")[0] for req in extras[extra]}
        assert {"psutil", "psycopg"} <= names, (extra, names)
