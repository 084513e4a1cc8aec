"""Static checks of docker-compose.yml (no Docker engine runs here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port."""
    out: dict[int, int] = {}
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        out[int(parts[-1])] = int(parts[-2])
    return out


def test_services_and_images() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "toxiproxy"}
    assert services["toxiproxy"]["image"] == "ghcr.io/shopify/toxiproxy:2.12.0"
    assert str(services["postgres"]["image"]).startswith("postgres:")


def test_postgres_health_check_uses_pg_isready() -> None:
    pg = _compose()["services"]["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert _published(pg)[5432] == 5432
    tp = _compose()["services"]["toxiproxy"]
    assert tp["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_toxiproxy_command_keeps_host_and_loads_the_mounted_config() -> None:
    tp = _compose()["services"]["toxiproxy"]
    command = tp["command"]
    assert "-host=0.0.0.0" in command
    config_arg = next(c for c in command if c.startswith("-config="))
    target = config_arg.removeprefix("-config=")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in tp["volumes"]}
    assert target in mounts
    assert (ROOT / mounts[target]).is_file()
    assert _published(tp)[8474] == 8474


def test_config_proxies_agree_with_services_and_ports() -> None:
    compose = _compose()
    tp = compose["services"]["toxiproxy"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in tp["volumes"]}
    config = json.loads((ROOT / mounts["/config/toxiproxy.json"]).read_text())
    assert isinstance(config, list)
    assert [p["name"] for p in config] == ["postgres"]
    published = _published(tp)
    pg_ports = _published(compose["services"]["postgres"])
    for proxy in config:
        listen_host, listen_port = proxy["listen"].rsplit(":", 1)
        assert listen_host == "0.0.0.0"
        assert int(listen_port) in published, proxy
        up_host, up_port = proxy["upstream"].rsplit(":", 1)
        assert up_host in compose["services"]
        assert int(up_port) in pg_ports
