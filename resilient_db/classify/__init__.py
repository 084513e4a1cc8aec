"""The classify stage: its internal surface for the stages above it.

Modules, one job each: ``_categories`` (kinds, phases, categories, the verdict), ``_facts``
(the exception chain and the server's SQLSTATE), ``_rule`` (one table row and its checks),
``_default_rules`` (the default table, as data), ``_classifier`` (matching, the shared
default classifier) and ``_docs`` (the docs page renderer). Imports flow in that order.
"""

from resilient_db.classify._categories import Category, Classification, ErrorKind, Phase
from resilient_db.classify._classifier import Classifier, classify, default_classifier
from resilient_db.classify._facts import ErrorFacts
from resilient_db.classify._rule import Rule

__all__ = [
    "Category",
    "Classification",
    "Classifier",
    "ErrorFacts",
    "ErrorKind",
    "Phase",
    "Rule",
    "classify",
    "default_classifier",
]
