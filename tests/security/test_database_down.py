"""Webhook deliveries and pages against a real PostgreSQL that refuses a value, or is down.

One hostile value (a NUL in a signed ref, a ref longer than its column) must not cost the
other deliveries of its audit batch; while the database is down, deliveries are answered,
kept in memory and recorded once it is back (``/healthz`` says why meanwhile), and the
pages and the JSON API answer a 503 that says so, not a generic 500.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer.model.status import DeliveryResult
from deployer.store import Delivery
from tests import gitea_payloads as gp
from tests.helpers import wait_for
from tests.pg_cluster import Cluster, own_cluster
from tests.security.inprocess import SECRET, App, running_app
from tests.store_fixtures import fresh_pg_database

ZERO = "0" * 40
GITEA = '[gitea]\nurl = "http://gitea.example:3000"\nallowed_owners = ["acme"]\n'


def push(app: App, after: str, *, name: str = "models", ref: str = "refs/heads/main", event: str = "push") -> Any:
    payload = gp.push_payload("acme", name, ref, ZERO, after, f"http://gitea.example:3000/acme/{name}.git")
    body = json.dumps(payload).encode()  # ASCII escapes: a lone surrogate (\ud800) travels too
    return app.client.post("/hooks/gitea", content=body,
                           headers=gp.headers(body, SECRET, event=event, delivery=str(uuid.uuid4())))


def sha(number: int) -> str:
    return f"{number:040x}"


def recorded(app: App) -> list[tuple[str, str, str]]:
    return [(view.ref, view.after, view.result.value) for view in app.daemon.store.deliveries.recent(1000)]


@pytest.fixture
def pg_app(tmp_path: Path, pg_server_url: str) -> Iterator[App]:
    with fresh_pg_database(pg_server_url) as url, running_app(tmp_path, extra=GITEA, database_url=url) as app:
        app.daemon.webhook.start()  # the audit writer's thread: rows are written in batches
        try:
            yield app
        finally:
            app.daemon.webhook.stop()


def test_a_nul_in_one_signed_ref_does_not_drop_its_audit_batch(pg_app: App) -> None:
    for number in range(10):
        assert push(pg_app, sha(number + 1)).status_code in (200, 202)
    for number, ref in enumerate(["refs/heads/ma\x00in", "refs/heads/\ud800"]):
        response = push(pg_app, sha(100 + number), ref=ref)
        assert response.status_code == 400 and "not a git ref" in response.json()["detail"]
    assert push(pg_app, sha(102), ref="refs/heads/" + "x" * 300).status_code == 200  # longer than its column
    assert push(pg_app, sha(200), event="p" * 40).status_code == 400  # an event longer than its column
    assert pg_app.daemon.webhook.flush(10)

    rows = recorded(pg_app)
    assert len(rows) == 10 + 3 + 1, rows
    assert ("refs/heads/" + "x" * 244, sha(102), DeliveryResult.IGNORED.value) in rows


def test_the_audit_stores_what_a_column_cannot_hold_as_replacement_characters(pg_app: App) -> None:
    store = pg_app.daemon.store
    store.deliveries.record([Delivery("d\x00", "push", "acme/\ud800", f"refs/heads/{number}\x00", sha(number),
                                      DeliveryResult.IGNORED, "nul \x00 in detail") for number in range(5)])
    rows = store.deliveries.recent(10)
    assert len(rows) == 5
    assert {(row.delivery_id, row.repository, row.detail) for row in rows} == {
        ("d\ufffd", "acme/\ufffd", "nul \ufffd in detail")}


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with own_cluster() as cluster:
        yield cluster


def test_deliveries_during_an_outage_are_answered_kept_and_recorded_when_the_database_is_back(
        tmp_path: Path, cluster: Cluster) -> None:
    with running_app(tmp_path, extra=GITEA, database_url=cluster.url) as app:
        app.daemon.webhook.start()
        try:
            assert push(app, sha(1)).status_code == 202  # acme/models becomes a followed source
            assert app.daemon.webhook.flush(10)
            cluster.stop()

            answers = [push(app, sha(number)).status_code for number in range(2, 12)]
            assert answers == [202] * 10  # no database on the path of a known source
            new_source = push(app, sha(50), name="other")
            assert new_source.status_code == 503 and "database is down" in new_source.json()["detail"]

            def kept() -> Any:  # the 10 accepted and the 1 refused, once the writer has tried them all
                health = app.client.get("/healthz")
                return health if "11 webhook deliveries kept in memory" in health.text else None

            health = wait_for(kept, 40, "/healthz saying the deliveries are kept")
            assert health.status_code == 503 and "Connection refused" in health.json()["checks"]["webhook_audit"]

            page = app.client.get("/")
            assert page.status_code == 503 and "database cannot be reached" in page.text
            assert page.headers["retry-after"] and page.headers["x-content-type-options"] == "nosniff"
            listing = app.client.get("/api/services")
            assert listing.status_code == 503 and "database cannot be reached" in listing.json()["error"]

            cluster.start()
            wait_for(lambda: app.daemon.webhook.check() is None and app.client.get("/healthz").json()["checks"]
                     .get("webhook_audit") == "ok", 40, "the kept deliveries recorded")
            rows = recorded(app)
            accepted = sorted(after for _, after, result in rows if result == DeliveryResult.ACCEPTED.value)
            assert accepted == sorted(sha(number) for number in range(1, 12))  # each once: nothing lost or doubled
            assert [after for _, after, result in rows if result == DeliveryResult.REJECTED.value] == [sha(50)]
            assert app.client.get("/").status_code == 200
            assert app.client.get("/api/services").status_code == 200
        finally:
            app.daemon.webhook.stop()
