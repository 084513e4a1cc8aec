"""The units stage: its internal surface for the stages above it."""

from resilient_db.units._attempt import DeadlineExceeded, UnitEvent, UnitListener, UnitOptions
from resilient_db.units._blocks import AttemptBlock, Attempts, Transaction
from resilient_db.units._commit import CommitOutcome
from resilient_db.units._database import Database, engine_health_check
from resilient_db.units._decorator import INJECTED, transactional
from resilient_db.units._keys import KeyRecord, KeyState, Ledger, create_ledger

__all__ = [
    "INJECTED",
    "AttemptBlock",
    "Attempts",
    "CommitOutcome",
    "Database",
    "DeadlineExceeded",
    "KeyRecord",
    "KeyState",
    "Ledger",
    "Transaction",
    "UnitEvent",
    "UnitListener",
    "UnitOptions",
    "create_ledger",
    "engine_health_check",
    "transactional",
]
