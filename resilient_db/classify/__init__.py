"""The classify stage: its internal surface for the stages above it."""

from resilient_db.classify._classifier import (
    Classification,
    Classifier,
    ErrorFacts,
    ErrorKind,
    Phase,
    Rule,
    classify,
    default_classifier,
)

__all__ = [
    "Classification",
    "Classifier",
    "ErrorFacts",
    "ErrorKind",
    "Phase",
    "Rule",
    "classify",
    "default_classifier",
]
