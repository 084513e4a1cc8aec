"""What a new cluster starts from: the settings, the pg_hba.conf, and an initdb template.

``initdb`` runs once per process and server version; every cluster is then a copy
(0.05-0.7 s where ``initdb`` takes 0.5-1.2 s, tmpfs vs disk). The template is removed at
exit, or by its watchdog if the process is killed.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import threading
from pathlib import Path
from typing import Final

from resilient_db.testing._binaries import SERVER_USER, give_to_server_user, run_tool
from resilient_db.testing._reaper import finalize, start_watchdog

__all__ = ["BASE_SETTINGS", "HBA", "LOCAL_CONF", "copy_template", "default_base_dir"]

# Settings written into every new cluster; ``settings=`` passed to ``create`` override them.
BASE_SETTINGS: Final[dict[str, str]] = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "50",
    "shared_buffers": "16MB",
    "fsync": "off",
    "full_page_writes": "off",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_keep_size": "128MB",
    "hot_standby": "on",
    "wal_receiver_status_interval": "1s",
    "wal_retrieve_retry_interval": "200ms",
    "restart_after_crash": "on",
    "logging_collector": "off",
    "log_line_prefix": "'%m [%p] '",
    "log_min_messages": "warning",
    "lc_messages": "'C'",
    "timezone": "'UTC'",
}

HBA: Final = """\
# written by resilient_db.testing: trust, local socket and 127.0.0.1 only
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
local   replication     all                                     trust
host    replication     all             127.0.0.1/32            trust
"""

# The local file holds what differs between a primary and its standbys (pg_basebackup copies
# the data directory, and this file is rewritten in the copy).
LOCAL_CONF: Final = "resilient_db_local.conf"

_MIN_TMPFS_FREE: Final = 1 << 30
_INITDB_ARGS: Final = ("-U", SERVER_USER, "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
_templates: dict[str, Path] = {}
_templates_lock = threading.Lock()


def default_base_dir() -> str | None:
    """``$RESILIENT_DB_CLUSTER_DIR``, else ``/dev/shm`` when it has >= 1 GiB free, else None.

    A memory file system makes a cluster ~10x quicker to create than a slow disk (``initdb``
    and copies write ~1,000 files); ``None`` means the system temporary directory.
    """
    env = os.environ.get("RESILIENT_DB_CLUSTER_DIR")
    if env:
        return env
    shm = "/dev/shm"
    try:
        stat = os.statvfs(shm)
    except OSError:
        return None
    if os.access(shm, os.W_OK | os.X_OK) and stat.f_bavail * stat.f_frsize >= _MIN_TMPFS_FREE:
        return shm
    return None


def copy_template(bindir: str, datadir: Path, *, timeout: float) -> None:
    """Fill ``datadir`` with a fresh cluster: ``initdb`` once per process, then copies."""
    with _templates_lock:
        template = _templates.get(bindir)
        if template is None or not template.is_dir():
            root = Path(tempfile.mkdtemp(prefix="rdb-pg-template-", dir=datadir.parent.parent))
            template = root / "data"
            # Removed at exit, or by its watchdog if this process is killed.
            atexit.register(finalize, root, template, start_watchdog(template, root))
            give_to_server_user(root)
            run_tool(
                [os.path.join(bindir, "initdb"), "-D", str(template), *_INITDB_ARGS],
                timeout=timeout,
                cwd=root,
            )
            _templates[bindir] = template
    run_tool(["cp", "-a", str(template), str(datadir)], timeout=timeout, cwd=datadir.parent)
