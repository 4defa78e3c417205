"""The security suite's tally: requests its property-based runs sent and how many got a 5xx (see conftest)."""

from __future__ import annotations

from collections import Counter

TALLY: Counter[str] = Counter()


def count(kind: str, status: int) -> None:
    TALLY[kind] += 1
    if status >= 500:
        TALLY["5xx"] += 1
