"""The default rules rendered as the docs page ``docs/classifier-rules.md``.

Regenerate it after changing a rule::

    python -m resilient_db.classify._docs > docs/classifier-rules.md
"""

from __future__ import annotations

import sys

from resilient_db.classify._default_rules import DEFAULT_RULES
from resilient_db.classify._rule import Rule

__all__ = ["render_rules_markdown"]


def _flag(value: bool) -> str:
    return "yes" if value else "no"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_HEADER: tuple[str, ...] = (
    "# Error classification rules",
    "",
    "<!-- Generated from resilient_db/classify/_default_rules.py; do not edit by hand.",
    "     Regenerate with:",
    "     python -m resilient_db.classify._docs > docs/classifier-rules.md -->",
    "",
    "`resilient_db.classify(exc, phase=..., in_recovery=..., own_timeout=...)` walks the",
    "exception chain (`.orig`, `__cause__`, then `__context__` if nothing in the explicit",
    "chain is recognised), takes the first SQLSTATE the *server* sent (asyncpg's",
    "client-side 08003 is ignored) and applies the first rule below that matches. All",
    "matchers of a rule must match; SQLSTATE classes are written as two characters.",
    "",
    "- *At COMMIT* is the kind used when `phase` is `commit` (a lost COMMIT may or may",
    "  not have been applied). A 40001 raised by COMMIT itself stays retryable.",
    "- In the `connect` phase the categories `connection_lost` and `timeout` read",
    "  `connect_failed`, and the pool is not invalidated.",
    "- An exception group gets the most severe verdict of its members (fatal, then",
    "  commit_unknown, then retryable).",
    "- No rule matches: fatal, category `unknown`, not counted toward the breaker.",
    "- *Max retries* is how often one call should retry an error of that rule at most; the",
    "  verdict carries it as `Classification.max_retries`, and the unit of work's retry loop",
    "  stops once a call's failures of that category exceed it (the policy's own limits,",
    "  attempts, deadline and budget, still apply).",
    "",
    "## Cancelled statements (SQLSTATE 57014)",
    "",
    "PostgreSQL sends 57014 for several causes; the message tells them apart:",
    "",
    "- `canceling statement due to statement timeout`: the server's `statement_timeout`",
    "  fired. Retryable **at most once** (category `statement_timeout`, `max_retries=1`): a",
    "  plan or lock wait that was slow once may pass, a repeat means the statement is too",
    "  slow for the limit. Not counted toward the breaker (a slow statement is not an",
    "  unavailable database).",
    "- `canceling statement due to user request` with `own_timeout` not True: an",
    "  administrator's or another session's `pg_cancel_backend`. **Fatal** (category",
    "  `admin_cancel`): the cancel was deliberate and a retry would undo it.",
    "- Any other 57014: our own deadline (`own_timeout=True`, or unknown) is a retryable",
    "  `timeout`; someone else's (`own_timeout=False`) is fatal.",
    "",
    "## Rules",
    "",
    "Add or override rules with `Classifier().with_rules(Rule(...))` (a rule with the",
    "name of an existing one replaces it) or remove them with `without_rules(name)`.",
    "",
    "| # | Rule | Matches | Kind | At COMMIT | Category | Breaker | Invalidate pool "
    "| Retry after | Max retries | Reason |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
)
"""The page before the table rows (intro, policies, table head)."""


def render_rules_markdown(rules: tuple[Rule, ...] = DEFAULT_RULES) -> str:
    """The rules table as Markdown (the content of docs/classifier-rules.md)."""
    lines = list(_HEADER)
    for i, rule in enumerate(rules, 1):
        if callable(rule.retry_after):
            retry_after = "from exception"
        elif rule.retry_after is None:
            retry_after = ""
        else:
            retry_after = f"{rule.retry_after:g} s"
        at_commit = (rule.at_commit or rule.kind).value
        lines.append(
            f"| {i} | `{rule.name}` | {_cell(rule.describe_match())} | {rule.kind.value} "
            f"| {at_commit} | {rule.category} | {_flag(rule.counts_toward_breaker)} "
            f"| {_flag(rule.invalidate_pool)} | {retry_after} "
            f"| {'' if rule.max_retries is None else rule.max_retries} | {_cell(rule.reason)} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render_rules_markdown())
