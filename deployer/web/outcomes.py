"""What an operation's item says when the work it follows ends: a pass (for one service or a whole
source) or a demo run, made into one ``Done`` line (ok, outcome, message, attempt, revision).

A service's line names the attempt the pass started for it, with that attempt's reason and message;
a pass that left it alone says why (the plan's reason: up to date, held, suspended …). A source's
line sums up the pass. ``FAILED`` outcomes make ``ok`` False, so the CLI exits 1.
"""

from __future__ import annotations

from collections import defaultdict

from deployer.demo import DemoResult
from deployer.operations import ItemResult
from deployer.reconcile import PassResult
from deployer.store import Store

# Pass outcomes that leave the service not as wanted, for an operator to look at.
FAILED = frozenset({"failed", "rolled_back", "stalled", "error", "interrupted", "waiting"})
# Pass outcomes that changed nothing (a source's pass with only these did nothing).
UNCHANGED = frozenset({"noop", "held", "suspended", "stopped", "deferred"})
LEFT_ALONE = {"noop": "up to date", "deferred": "an operator's action ran meanwhile; the next pass decides"}


def service_in_pass(store: Store, service: str, result: PassResult, *, since: int | None) -> ItemResult:
    """``service``'s line of the pass that served a request made when ``since`` was its newest attempt.

    A pass already running when the request came may have acted on it first (an override it read):
    when the serving pass started no attempt for the service, a newer attempt than ``since`` is the one.
    """
    outcome = result.outcomes.get(service)
    attempt_id = result.attempts.get(service) or _started_since(store, service, since)
    attempt = store.history.attempt(attempt_id) if attempt_id is not None else None
    if attempt is not None:
        ended = result.outcomes.get(service, attempt.outcome) if service in result.attempts else attempt.outcome
        return ItemResult(ended not in FAILED, ended, f"{attempt.reason}: {attempt.message}", attempt.id,
                          attempt.revision)
    if outcome is None:
        if result.error:
            return ItemResult(False, "failed", f"the pass of {result.source} did not run: {result.error}")
        return ItemResult(True, "noop", f"not in {result.source}'s pass at {(result.sha or '?')[:7]}")
    return ItemResult(outcome not in FAILED, outcome, result.problems.get(service) or _planned(result, service))


def _started_since(store: Store, service: str, since: int | None) -> int | None:
    newest = store.history.newest_started(service)
    return newest if newest is not None and newest != since else None


def _planned(result: PassResult, service: str) -> str:
    """Why the pass did what it did to a service it started no attempt for (the plan says)."""
    actions = result.plan.actions if result.plan is not None else ()
    reason = next((action.reason for action in actions if action.service == service), "")
    return reason or LEFT_ALONE.get(result.outcomes.get(service, ""), "")


def source_pass(source: str, result: PassResult) -> ItemResult:
    """A whole source's line: what its pass did, grouped by outcome, or why it could not run."""
    if result.error:
        return ItemResult(False, "failed", result.error)
    by_outcome: dict[str, list[str]] = defaultdict(list)
    for service, outcome in sorted(result.outcomes.items()):
        by_outcome[outcome].append(service)
    quiet = len(by_outcome.pop("noop", []))
    parts = [f"{outcome}: {', '.join(services)}" for outcome, services in sorted(by_outcome.items())]
    parts += [f"{quiet} up to date"] if quiet else []
    failed = any(outcome in FAILED for outcome in by_outcome)
    changed = any(outcome not in UNCHANGED for outcome in by_outcome)
    summary = f"{(result.sha or '?')[:7]}: {'; '.join(parts) or 'no services'}"
    return ItemResult(not failed, "failed" if failed else "succeeded" if changed else "noop", summary)


def demos_ran(revision: int, results: list[DemoResult]) -> ItemResult:
    """``deployer demo``'s line: how many passed against which revision, and what failed."""
    passed = sum(result.ok for result in results)
    failing = "; ".join(result.summary for result in results if not result.ok)
    message = f"{passed}/{len(results)} demos passed against revision {revision}" + (f": {failing}" if failing else "")
    ok = passed == len(results)
    return ItemResult(ok, "passed" if ok else "failed", message, revision=revision)
