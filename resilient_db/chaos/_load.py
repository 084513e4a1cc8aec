"""Finding the user's workload: ``package.module:factory`` or ``[tool.resilient_db.chaos]``."""

from __future__ import annotations

import importlib
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from resilient_db._errors import ConfigurationError
from resilient_db.chaos._model import Workload, WorkloadContext, WorkloadFactory

__all__ = ["load_workload", "pyproject_config", "resolve"]


def resolve(spec: str) -> WorkloadFactory:
    """Import ``package.module:factory`` and return the factory (or wrap a Workload)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(
            f"workload {spec!r}: expected package.module:factory (e.g. myapp.chaos:workload)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"workload {spec!r}: cannot import {module_name!r} ({exc}); install your project "
            "into this environment (pip install -e .) or run from its directory"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigurationError(f"workload {spec!r}: {module_name} has no {attr!r}")
        target = getattr(target, part)
    if isinstance(target, Workload):
        workload = target
        return lambda ctx: workload
    if not callable(target):
        raise ConfigurationError(f"workload {spec!r} is neither a Workload nor a factory")
    return _checked(spec, cast(Callable[[WorkloadContext], object], target))


def _checked(spec: str, fn: Callable[[WorkloadContext], object]) -> WorkloadFactory:
    def factory(ctx: WorkloadContext) -> Workload:
        made = fn(ctx)
        if not isinstance(made, Workload):
            raise ConfigurationError(
                f"workload {spec!r} returned {type(made).__name__}, expected "
                "resilient_db.chaos.Workload"
            )
        return made

    return factory


def pyproject_config(start: Path | None = None) -> dict[str, Any]:
    """The ``[tool.resilient_db.chaos]`` table of the nearest pyproject.toml (or ``{}``)."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        path = directory / "pyproject.toml"
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ConfigurationError(f"{path}: not valid TOML ({exc})") from exc
            table = data.get("tool", {}).get("resilient_db", {}).get("chaos", {})
            if not isinstance(table, dict):
                raise ConfigurationError(f"{path}: [tool.resilient_db.chaos] must be a table")
            if table and str(directory) not in sys.path:
                sys.path.insert(0, str(directory))  # the project's modules are importable
            return dict(table)
    return {}


def load_workload(spec: str) -> WorkloadFactory:
    """:func:`resolve`, with the current directory importable (like ``python -m``)."""
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return resolve(spec)
