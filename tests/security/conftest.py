"""Prints the security suite's tally at the end of a run that included its property-based tests.

The README's "Security" figures come from this line:
``security fuzz: N webhook deliveries, M API requests, 5xx answers: K``.
"""

from __future__ import annotations

import pytest

from tests.security.tally import TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TALLY["webhook"] or TALLY["api"]:
        terminalreporter.write_line(f"security fuzz: {TALLY['webhook']} webhook deliveries, {TALLY['api']} API "
                                    f"requests, 5xx answers: {TALLY['5xx']}")
