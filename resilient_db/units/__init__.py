"""The units stage: its internal surface for the stages above it."""

from resilient_db.engine import engine_health_check
from resilient_db.units._blocks import AttemptBlock, Attempts, Transaction
from resilient_db.units._commit import CommitOutcome
from resilient_db.units._database import Database
from resilient_db.units._decorator import INJECTED, transactional
from resilient_db.units._gate import Gate, GateStatistics, WaitListener
from resilient_db.units._keys import KeyRecord, KeyState, Ledger, create_ledger
from resilient_db.units._options import (
    DEFAULT_ALLOWANCE,
    DeadlineExceeded,
    UnitEvent,
    UnitListener,
    UnitOptions,
)
from resilient_db.units._shared import shared_gate

__all__ = [
    "DEFAULT_ALLOWANCE",
    "INJECTED",
    "AttemptBlock",
    "Attempts",
    "CommitOutcome",
    "Database",
    "DeadlineExceeded",
    "Gate",
    "GateStatistics",
    "KeyRecord",
    "KeyState",
    "Ledger",
    "Transaction",
    "UnitEvent",
    "UnitListener",
    "UnitOptions",
    "WaitListener",
    "create_ledger",
    "engine_health_check",
    "shared_gate",
    "transactional",
]
