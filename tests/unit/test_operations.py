"""Operations: every service of a batch gets its line, at most ``workers`` run at once, and one
service's failure (an error, or a bug) never stops the others."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from deployer.errors import StalledError
from deployer.operations import Operations
from tests.helpers import wait_for


@dataclass(frozen=True)
class Done:
    ok: bool
    outcome: str
    message: str
    attempt: int | None = None
    revision: int | None = None


def test_a_batch_runs_bounded_and_reports_each_service_even_when_some_fail() -> None:
    operations = Operations(workers=2)
    release, lock = threading.Event(), threading.Lock()
    running, most = [0], [0]

    def work(name: str) -> Callable[[], Done]:
        def run() -> Done:
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            release.wait(10)
            with lock:
                running[0] -= 1
            if name == "broken":
                raise StalledError("broken: nothing is running to restart")
            if name == "buggy":
                raise KeyError("a bug")
            return Done(True, "restarted", f"{name} ok", 7)
        return run

    names = ["a", "broken", "b", "buggy", "c"]
    operation = operations.submit("restart", {name: work(name) for name in names})
    assert [item.state for item in operation.items] == ["queued"] * 5 and not operation.done
    wait_for(lambda: running[0] == 2, 10, "two services running")
    release.set()
    final = wait_for(lambda: (found := operations.get(operation.id)) and found.done and found, 10, "the batch")
    assert most[0] == 2
    by_name = {item.name: item for item in final.items}
    assert [item.name for item in final.items] == names
    assert by_name["a"].ok and by_name["a"].outcome == "restarted" and by_name["a"].attempt == 7
    assert by_name["broken"].ok is False and "nothing is running" in by_name["broken"].message
    assert by_name["buggy"].ok is False and by_name["buggy"].message == "internal error: KeyError"
    assert final.failed == ["broken", "buggy"]
    operations.shutdown()


def test_only_the_newest_operations_are_kept() -> None:
    operations = Operations(workers=1, keep=2)
    ids = [operations.submit("stop", {"a": lambda: Done(True, "stopped", "")}).id for _ in range(3)]
    assert operations.get(ids[0]) is None and operations.get(ids[2]) is not None
    operations.shutdown()
