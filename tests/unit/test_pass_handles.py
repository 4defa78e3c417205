"""A requested pass answers a handle: merged requests share the pass and its result, a stopped queue
cancels what never ran, a crashed pass fails its handle; an operation tracking such handles ends each
item with what the pass did, without a thread of its own waiting."""

from __future__ import annotations

import threading
from concurrent.futures import Future

from deployer.model.status import Trigger
from deployer.operations import ItemKind, ItemResult, Operations
from deployer.scheduler import Request, WorkQueue
from tests.helpers import wait_for


class Gated:
    """A pass handler that blocks until released and answers what it was asked."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.seen: list[Request] = []

    def __call__(self, request: Request) -> str:
        self.seen.append(request)
        self.started.set()
        self.release.wait(10)
        if request.source == "crashes":
            raise KeyError("a bug")
        return f"{request.source}:{request.trigger.value}:{','.join(sorted(request.retry))}"


def test_merged_requests_share_one_pass_and_its_result() -> None:
    handler = Gated()
    queue: WorkQueue[str] = WorkQueue(handler, workers=1)
    queue.start()
    try:
        first = queue.request("busy", Trigger.SCHEDULE)
        assert handler.started.wait(10)  # "busy" runs; the next two wait and merge
        waiting = queue.request("models", Trigger.SCHEDULE)
        merged = queue.request("models", Trigger.CLI, retry=frozenset({"svc"}))
        assert merged is waiting and not waiting.done()
        again = queue.request("busy", Trigger.WEBHOOK)  # "busy" is running: a pass after it, not that one
        assert again is not first
        handler.release.set()
        assert first.result(10) == "busy:schedule:"
        assert waiting.result(10) == "models:cli:svc"  # the stronger trigger, the retry asked for
        assert again.result(10) == "busy:webhook:"
    finally:
        handler.release.set()
        queue.stop(timeout=10)


def test_stopping_cancels_what_never_ran_and_a_crashed_pass_fails_its_handle() -> None:
    handler = Gated()
    queue: WorkQueue[str] = WorkQueue(handler, workers=1)
    queue.start()
    crashed = queue.request("crashes", Trigger.CLI)
    assert handler.started.wait(10)
    pending = queue.request("models", Trigger.CLI)
    stopper = threading.Thread(target=queue.stop, kwargs={"timeout": 10})
    stopper.start()
    wait_for(lambda: pending.cancelled(), 5, "the pending pass's handle cancelled")
    handler.release.set()
    stopper.join(10)
    assert isinstance(crashed.exception(10), KeyError)
    assert queue.request("models", Trigger.CLI).cancelled()  # a stopped queue takes nothing
    assert [request.source for request in handler.seen] == ["crashes"]


def test_a_tracked_item_runs_until_its_handle_ends_and_holds_no_thread() -> None:
    operations = Operations(workers=1)
    blocker = threading.Event()
    try:
        # the only pool thread is busy: tracked items must end all the same
        operations.submit("restart", {"busy": lambda: (blocker.wait(10), ItemResult(True, "restarted", ""))[1]})
        ok: Future[str] = Future()
        bad: Future[str] = Future()
        crashed: Future[str] = Future()
        stopped: Future[str] = Future()
        operation = operations.track("reconcile", {"a": ok, "b": bad, "c": crashed, "d": stopped},
                                     lambda name, result: ItemResult(result == "fine", result, f"{name}: {result}",
                                                                     attempt=7, revision=3), kind=ItemKind.SOURCE)
        assert [item.state for item in operation.items] == ["running"] * 4 and not operation.done
        ok.set_result("fine")
        bad.set_result("failed")
        crashed.set_exception(RuntimeError("pass crashed"))
        stopped.cancel()
        final = operations.get(operation.id)
        assert final is not None and final.done
        by_name = {item.name: item for item in final.items}
        assert by_name["a"].ok and by_name["a"].message == "a: fine" and by_name["a"].attempt == 7
        assert by_name["a"].revision == 3 and by_name["a"].kind is ItemKind.SOURCE
        assert by_name["b"].ok is False and by_name["b"].outcome == "failed"
        assert by_name["c"].ok is False and by_name["c"].message == "internal error: RuntimeError"
        assert by_name["d"].ok is False and by_name["d"].outcome == "cancelled"
        assert final.failed == ["b", "c", "d"]
    finally:
        blocker.set()
        operations.shutdown()


def test_tracking_a_handle_already_done_answers_it_done() -> None:
    operations = Operations(workers=1)
    done: Future[str] = Future()
    done.set_result("fine")
    operation = operations.track("rollback", {"svc": done}, lambda name, result: ItemResult(True, result, ""))
    assert operation.done and operation.items[0].outcome == "fine"
    operations.shutdown()
