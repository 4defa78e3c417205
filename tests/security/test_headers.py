"""Security headers on every route's answer, whatever its type; ``/api/plan?fetch=1`` needs the token.

Every route of the app (read from its routes table, so a new one is covered at once) answers
HTML, JSON and plain text alike with ``nosniff``, a Content-Security-Policy, no framing
and no referrer — errors and unknown paths included.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from starlette.routing import Route

from tests.security.inprocess import TOKEN, App, running_app

EXPECTED = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    with running_app(tmp_path_factory.mktemp("headers")) as app:
        yield app


def requests(app: App) -> list[tuple[str, str]]:
    found = [("GET", "/no/such/page"), ("DELETE", "/api/services")]
    for route in app.daemon.app.routes:
        assert isinstance(route, Route)
        path = re.sub(r"\{[^}]+\}", "1", route.path)
        found += [(method, path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return found


def test_every_route_answers_with_the_security_headers(app: App) -> None:
    checked = 0
    for method, path in requests(app):
        if path == "/healthz":
            continue  # asks the supervisor runtime, which would start a supervisord for this test
        for auth in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            response = app.client.request(method, path, headers=auth, content=b"{}" if method == "POST" else None)
            assert response.status_code < 500, (method, path, response.text)
            for name, value in EXPECTED.items():
                assert response.headers.get(name) == value, (method, path, name, dict(response.headers))
            assert response.headers.get("content-security-policy"), (method, path)
            checked += 1
    assert checked >= 30


def test_a_page_keeps_its_own_policy(app: App) -> None:
    page = app.client.get("/")
    assert "style-src 'unsafe-inline'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


def test_plan_with_a_fetch_needs_the_token(app: App) -> None:
    assert app.client.get("/api/plan").status_code == 200  # what the mirrors say now: no remote asked
    refused = app.client.get("/api/plan", params={"fetch": "1"})
    assert refused.status_code == 401 and "bearer token" in refused.json()["error"]
    answered = app.client.get("/api/plan", params={"fetch": "1"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answered.status_code == 200, answered.text
