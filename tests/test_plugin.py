"""The pytest plugin, in isolation: a fresh inner pytest run (pytester) per behaviour."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

FIXTURES = (
    "toxiproxy_server",
    "toxiproxy",
    "toxiproxy_postgres",
    "resilient_db_cluster",
    "resilient_db_cluster_pair",
    "resilient_db_shared_pair",
)


def _inner(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    # No conftest and no ini of this repository: only the plugin, as an installed user has it.
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", *args, timeout=120)


def test_the_entry_point_loads_the_plugin_with_every_fixture(pytester: pytest.Pytester) -> None:
    result = _inner(pytester, "def test_nothing():\n    pass\n", "--fixtures")
    assert result.ret == 0
    out = result.stdout.str()
    for name in FIXTURES:
        assert name in out, name
    assert "resilient_db/pytest_plugin.py" in out
    helped = _inner(pytester, "def test_nothing():\n    pass\n", "--help")
    assert "--toxiproxy-url" in helped.stdout.str()


def test_the_old_module_name_still_registers_without_duplicates(pytester: pytest.Pytester) -> None:
    source = 'pytest_plugins = ["resilient_db.testing.fixtures"]\ndef test_nothing():\n    pass\n'
    result = _inner(pytester, source, "--fixtures")
    assert result.ret == 0, result.stderr.str()
    assert result.stdout.str().count("resilient_db_cluster_pair -- ") == 1


def test_importing_the_plugin_starts_and_loads_nothing_heavy() -> None:
    code = (
        "import sys, resilient_db.pytest_plugin as p; "
        "heavy = [m for m in ('psutil', 'psycopg', 'resilient_db.testing._cluster', "
        "'resilient_db.toxiproxy._server') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_toxiproxy_fixtures_proxy_a_tcp_server(pytester: pytest.Pytester) -> None:
    source = """
import socket, threading

def test_proxy(toxiproxy, toxiproxy_postgres):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def echo():
        conn, _ = server.accept()
        with conn:
            conn.sendall(conn.recv(16))

    threading.Thread(target=echo, daemon=True).start()
    db = toxiproxy_postgres(f"postgresql://u@127.0.0.1:{port}/d", name="plugin_test")
    assert db.port != port and db.url.endswith(f":{db.port}/d")
    with socket.create_connection((db.host, db.port), timeout=10) as c:
        c.sendall(b"ping")
        assert c.recv(16) == b"ping"
    assert list(toxiproxy.proxies()) == ["plugin_test"]
    server.close()

def test_proxies_are_gone_after_the_test(toxiproxy):
    assert toxiproxy.proxies() == {}
"""
    _inner(pytester, source).assert_outcomes(passed=2)


def test_a_url_without_a_tcp_host_is_named_with_the_fix(pytester: pytest.Pytester) -> None:
    source = """
import pytest
from resilient_db import ConfigurationError

def test_bad(toxiproxy_postgres):
    with pytest.raises(ConfigurationError, match=r"toxiproxy_postgres\\(url=.*fix: "):
        toxiproxy_postgres("postgresql:///db?host=/tmp")
"""
    _inner(pytester, source).assert_outcomes(passed=1)


@pytest.mark.cluster
@pytest.mark.slow
def test_cluster_fixture_and_the_shared_pair_guard(pytester: pytest.Pytester) -> None:
    source = """
def test_fresh(resilient_db_cluster):
    assert resilient_db_cluster.is_running()
    assert resilient_db_cluster.execute("SELECT 1") == [(1,)]

def test_shared_pair_is_usable(resilient_db_shared_pair):
    assert resilient_db_shared_pair.standby.role == "standby"
    resilient_db_shared_pair.primary.stop("fast")  # breaks the rule on purpose

def test_shared_pair_guard_fails_the_next_user(resilient_db_shared_pair):
    pass
"""
    result = _inner(pytester, source)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*the shared cluster pair was changed by an earlier test*"])
