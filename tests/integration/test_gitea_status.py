"""StatusReporter against the Gitea stand-in over loopback HTTP: queueing, outages, retries, coalescing."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from deployer.gitea import CommitState, GiteaClient, Retry, StatusReporter
from tests.gitea_standin import GiteaStandIn
from tests.helpers import wait_for

SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
REPO = "acme/models"
PUBLIC = "http://deployer.example:8700"
MakeReporter = Callable[..., StatusReporter]

RETRY_FIELDS = ("max_tries", "max_age", "first_delay", "max_delay", "jitter")


@pytest.fixture
def repo(gitea: GiteaStandIn) -> GiteaStandIn:
    gitea.add_repo("acme", "models", [SHA])
    return gitea


@pytest.fixture
def make_reporter(repo: GiteaStandIn) -> Iterator[MakeReporter]:
    made: list[tuple[StatusReporter, GiteaClient]] = []

    def make(token: str | None = None, *, start: bool = True, **options: Any) -> StatusReporter:
        client = GiteaClient(repo.url, token or repo.token, timeout=1.0)
        options = {"public_url": PUBLIC, "first_delay": 0.02, "max_delay": 0.1, "max_tries": 100, **options}
        retry = Retry(**{key: options.pop(key) for key in RETRY_FIELDS if key in options})
        reporter = StatusReporter(client, retry=retry, **options)
        made.append((reporter, client))
        if start:
            reporter.start()
        return reporter

    yield make
    for reporter, client in made:
        reporter.stop(timeout=1.0)
        client.close()


def _states(gitea: GiteaStandIn) -> list[tuple[str, str]]:
    return [(row["context"], row["status"]) for row in gitea.statuses(REPO, SHA)]


def _gitea_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "deployer.gitea" and record.levelno == level]


def test_pending_then_success_arrive_in_order_with_link_and_context(repo: GiteaStandIn,
                                                                     make_reporter: MakeReporter) -> None:
    reporter = make_reporter()
    reporter.report(REPO, SHA, "text-classify", CommitState.PENDING, "deploying 3f78685")
    assert reporter.wait_idle(5)
    reporter.report(REPO, SHA, "text-classify", CommitState.SUCCESS, "healthy after 1.2s")
    assert reporter.wait_idle(5)

    assert _states(repo) == [("deployer/text-classify", "pending"), ("deployer/text-classify", "success")]
    final = repo.statuses(REPO, SHA)[-1]
    assert final["target_url"] == f"{PUBLIC}/services/text-classify" and final["description"] == "healthy after 1.2s"


def test_report_during_an_outage_returns_at_once_and_arrives_after_recovery(
        repo: GiteaStandIn, make_reporter: MakeReporter, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    senders: list[str] = []  # the thread each try to send a status ran on
    send = GiteaClient.set_status

    def recorded(client: GiteaClient, *args: Any, **kwargs: Any) -> None:
        senders.append(threading.current_thread().name)
        send(client, *args, **kwargs)

    monkeypatch.setattr(GiteaClient, "set_status", recorded)
    reporter = make_reporter()
    repo.down()
    reporter.report(REPO, SHA, "asr", CommitState.SUCCESS, "healthy")
    # "Returns at once" is checked by where the work happens, not by a stopwatch: a
    # wall-clock bound (it was < 10 ms) flakes on a loaded machine, and would not even
    # notice a report that tried Gitea itself, since a refused connection fails in well
    # under 10 ms. Every try runs on the reporter's thread, so a deploy never waits on Gitea.
    wait_for(lambda: len(senders) >= 3 and _gitea_records(caplog, logging.INFO), 5,
             "several failed tries against the closed port")
    assert set(senders) == {"gitea-status"}, senders
    assert reporter.pending_count() == 1

    repo.up()
    assert reporter.wait_idle(5)
    assert _states(repo) == [("deployer/asr", "success")]
    assert repo.token not in caplog.text and not _gitea_records(caplog, logging.WARNING)


def test_newest_status_per_commit_and_context_wins_after_an_outage(
        repo: GiteaStandIn, make_reporter: MakeReporter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="deployer.gitea")
    reporter = make_reporter()
    repo.down()
    reporter.report(REPO, SHA, "asr", CommitState.PENDING, "deploying")
    reporter.report(REPO, SHA, "ocr", CommitState.PENDING, "deploying")
    wait_for(lambda: _gitea_records(caplog, logging.INFO), 5, "a failed try: the pending statuses are being retried")
    reporter.report(REPO, SHA, "asr", CommitState.SUCCESS, "healthy")
    reporter.report(REPO, SHA, "ocr", CommitState.FAILURE, "HealthCheckFailed: /health answered 500")
    assert reporter.pending_count() == 2

    repo.up()
    assert reporter.wait_idle(5)
    assert sorted(_states(repo)) == [("deployer/asr", "success"), ("deployer/ocr", "failure")]


def test_server_errors_are_retried_with_exponential_backoff(repo: GiteaStandIn, make_reporter: MakeReporter) -> None:
    delays: list[float] = []
    reporter = make_reporter(first_delay=0.5, max_delay=1.5, jitter=0.0, sleep=delays.append)
    repo.fail_next(4, 503)
    reporter.report(REPO, SHA, "asr", CommitState.SUCCESS, "healthy")
    assert reporter.wait_idle(5)

    assert delays == [0.5, 1.0, 1.5, 1.5]
    assert len(repo.requests("POST")) == 5 and _states(repo) == [("deployer/asr", "success")]


def test_gives_up_after_max_tries_with_one_warning(repo: GiteaStandIn, make_reporter: MakeReporter,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    reporter = make_reporter(max_tries=3, sleep=lambda _: None)
    reporter.report(REPO, "0" * 40, "asr", CommitState.SUCCESS, "healthy")  # unknown commit: Gitea answers 500
    assert reporter.wait_idle(5)

    assert len(repo.requests("POST")) == 3
    [warning] = _gitea_records(caplog, logging.WARNING)
    assert "gave up" in warning.getMessage() and "deployer/asr" in warning.getMessage()
    assert repo.token not in caplog.text


def test_an_outage_of_any_length_short_of_max_age_loses_no_status(repo: GiteaStandIn,
                                                                   make_reporter: MakeReporter) -> None:
    """No try count by default: 40 failed tries (an outage of ~35 min at the 60 s cap) still deliver,
    and ``problem`` says why statuses wait until one gets through."""
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    reporter = make_reporter(max_tries=None, sleep=sleep, clock=lambda: now[0], max_delay=60.0, start=False)
    repo.fail_next(40, 503)
    reporter.report(REPO, SHA, "asr", CommitState.SUCCESS, "healthy")
    assert reporter.problem is None  # nothing has failed yet
    reporter.start()
    assert reporter.wait_idle(20)
    assert _states(repo) == [("deployer/asr", "success")] and len(repo.requests("POST")) == 41
    assert reporter.problem is None


def test_a_status_older_than_max_age_is_dropped_with_a_warning(repo: GiteaStandIn, make_reporter: MakeReporter,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    reporter = make_reporter(max_tries=None, max_age=30.0, sleep=sleep, clock=lambda: now[0], max_delay=10.0)
    reporter.report(REPO, "0" * 40, "asr", CommitState.SUCCESS, "healthy")  # unknown commit: Gitea answers 500
    assert reporter.wait_idle(5)
    [warning] = _gitea_records(caplog, logging.WARNING)
    assert "gave up" in warning.getMessage() and now[0] >= 30.0


def test_a_wrong_token_is_logged_once_and_not_retried(repo: GiteaStandIn, make_reporter: MakeReporter,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "wrong-token-b7e2a9c4d1"
    reporter = make_reporter(secret)
    reporter.report(REPO, SHA, "asr", CommitState.SUCCESS, "healthy")
    assert reporter.wait_idle(5)

    assert len(repo.requests("POST")) == 1 and repo.statuses(REPO, SHA) == []
    [warning] = _gitea_records(caplog, logging.WARNING)
    assert "401" in warning.getMessage() and secret not in caplog.text


def test_a_newer_status_replaces_one_that_is_being_retried(repo: GiteaStandIn, make_reporter: MakeReporter) -> None:
    retried = threading.Event()
    release = threading.Event()

    def sleep(_: float) -> None:
        retried.set()
        release.wait(5)

    reporter = make_reporter(sleep=sleep)
    repo.fail_next(1, 502)
    reporter.report(REPO, SHA, "asr", CommitState.PENDING, "deploying")
    assert retried.wait(5)  # the pending status failed once and waits for its retry
    reporter.report(REPO, SHA, "asr", CommitState.FAILURE, "RolledBack")
    release.set()
    assert reporter.wait_idle(5)
    assert _states(repo) == [("deployer/asr", "failure")]


def test_without_a_client_report_is_a_no_op() -> None:
    reporter = StatusReporter(None, public_url=PUBLIC)
    reporter.start()
    reporter.report(REPO, SHA, "asr", CommitState.SUCCESS, "healthy")
    assert not reporter.enabled and reporter.pending_count() == 0 and reporter.wait_idle(0)
    reporter.stop(timeout=0.1)
    assert not any(thread.name == "gitea-status" for thread in threading.enumerate())


def test_stop_delivers_what_is_queued_and_joins_the_thread(repo: GiteaStandIn, make_reporter: MakeReporter) -> None:
    reporter = make_reporter(start=False)
    for service in ("a", "b", "c"):
        reporter.report(REPO, SHA, service, CommitState.SUCCESS, "healthy")
    reporter.start()
    reporter.stop(timeout=5)

    assert sorted(_states(repo)) == [("deployer/a", "success"), ("deployer/b", "success"), ("deployer/c", "success")]
    assert not any(thread.name == "gitea-status" for thread in threading.enumerate())


def test_stop_during_an_outage_is_bounded_and_says_what_was_lost(repo: GiteaStandIn, make_reporter: MakeReporter,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="deployer.gitea")
    reporter = make_reporter(first_delay=30.0, max_delay=60.0)
    repo.down()
    reporter.report(REPO, SHA, "a", CommitState.SUCCESS, "healthy")
    reporter.report(REPO, SHA, "b", CommitState.SUCCESS, "healthy")
    wait_for(lambda: any("deployer/a" in record.getMessage() for record in _gitea_records(caplog, logging.INFO)),
             5, '"a" to fail and wait 30 s for its retry')
    started = time.monotonic()
    reporter.stop(timeout=1.0)

    assert time.monotonic() - started < 2.0
    assert not any(thread.name == "gitea-status" for thread in threading.enumerate())
    assert any("not delivered" in record.getMessage() or "gave up" in record.getMessage()
               for record in _gitea_records(caplog, logging.WARNING))


def test_a_full_queue_drops_the_oldest_and_never_blocks(repo: GiteaStandIn, make_reporter: MakeReporter,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    reporter = make_reporter(start=False, max_queue=1000)

    def fill() -> None:
        for n in range(1003):
            reporter.report(REPO, SHA, f"svc-{n}", CommitState.SUCCESS, "healthy")

    # "Never blocks" by outcome, not by a per-call stopwatch: no worker runs yet, so a
    # report that waited for room in the full queue would wait forever (or for its own
    # timeout, three times); the reports run on a helper thread given a bound no
    # healthy run comes near.
    filler = threading.Thread(target=fill, daemon=True)
    filler.start()
    filler.join(10)
    assert not filler.is_alive(), "report blocked on a full queue"
    assert reporter.pending_count() == 1000
    warnings = [record.getMessage() for record in _gitea_records(caplog, logging.WARNING)]
    assert [("queue full" in text, f"svc-{n}=" in text) for n, text in enumerate(warnings)] == [(True, True)] * 3

    reporter.start()
    assert reporter.wait_idle(30)
    contexts = {context for context, _ in _states(repo)}
    assert "deployer/svc-0" not in contexts and "deployer/svc-1002" in contexts and len(contexts) == 1000
