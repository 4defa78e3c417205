"""The OpenAPI description of the JSON API: served, in step with the routes, and fuzzed by schemathesis.

The sync tests read the app's own routes table, so a new endpoint without an entry in
``deployer/web/openapi.yaml`` fails here with its method and path named. The property-based
run sends schemathesis' valid and invalid requests to every operation (against a store
holding a service with revisions, attempts and a demo answer, with and without the token)
and requires that none is answered with a 5xx.

Bounded: ``DEPLOYER_FUZZ_EXAMPLES`` // 10 examples per operation, mode and name (default 20),
each sent without and with the token.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from starlette.routing import Route

from deployer.model.desired import DesiredService
from deployer.model.status import Outcome, Trigger
from deployer.web.api import ACTIONS, RUN_ACTIONS
from deployer.web.openapi import SPEC, description
from tests.security.inprocess import TOKEN, App, running_app
from tests.security.tally import count

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import schemathesis
    from schemathesis import GenerationMode

EXAMPLES = max(5, int(os.environ.get("DEPLOYER_FUZZ_EXAMPLES", "200")) // 10)
METHODS = ("get", "post", "put", "patch", "delete")
OPERATIONS = [(path, method) for path, item in description()["paths"].items() for method in item
              if method in METHODS]
SERVICE = "text-classify"


def _has_inputs(path: str, method: str) -> bool:
    """Whether an invalid request exists: a body, or a parameter that is not free text."""
    item = description()["paths"][path]
    parameters = [parameter for parameter in [*item.get("parameters", []), *item[method].get("parameters", [])]
                  if "schema" in parameter]
    return bool(item[method].get("requestBody")) or any(
        "enum" in parameter["schema"] or parameter["schema"].get("type") != "string" for parameter in parameters)


# Invalid requests exist only for operations that take something; each one's id names it.
RUNS = [pytest.param(path, method, mode, id=f"{method.upper()} {path} {mode.value}")
        for path, method in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if mode is GenerationMode.POSITIVE or _has_inputs(path, method)]


def api_routes(app: Any) -> set[tuple[str, str]]:
    return {(route.path, method.lower()) for route in app.routes if isinstance(route, Route)
            and route.path.startswith("/api/") for method in (route.methods or ()) if method != "HEAD"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    with running_app(tmp_path_factory.mktemp("openapi")) as app:
        seed(app)
        yield app


def seed(app: App) -> None:
    """A service with two revisions, a finished and a failed attempt with steps, and a demo answer."""
    store = app.daemon.store
    revisions = []
    for number, model in enumerate(("bert", "roberta")):
        desired = DesiredService(name=SERVICE, source="acme/models", sha=f"{number + 1:040x}", tree="f" * 40,
                                 runtime="supervisor", command="python -m uvicorn main:app --port ${PORT}",
                                 port=20990, env={"MODEL_NAME": model, "API_KEY": "hidden"})
        store.services.upsert(SERVICE, "acme/models", "supervisor")
        revisions.append(store.history.add_revision(desired, author="ana <a@example>", message=f"use {model}",
                                                    manifest_text="name: text-classify\n"))
        store.services.set_desired(SERVICE, revisions[-1].id)
    for revision, outcome in zip(revisions, (Outcome.SUCCEEDED, Outcome.FAILED), strict=True):
        attempt = store.history.start_attempt(SERVICE, revision.id, Trigger.WEBHOOK)
        store.history.add_step(attempt, "build", 0.5, outcome is Outcome.SUCCEEDED, "built\n")
        store.history.finish_attempt(attempt, outcome, "HealthCheckFailed", "done")
    store.services.set_running(SERVICE, revisions[0].id)
    store.demos.record(SERVICE, revisions[0].id, None, name="short", ok=True, status=200, latency_ms=3.5,
                       content_type="application/json", text='{"label": "positive"}', body_file=None,
                       truncated=False, problems="")


# -- the description and the routes -----------------------------------------------------------------

def test_every_api_route_has_an_entry_and_every_entry_a_route(app: App) -> None:
    routes = api_routes(app.daemon.app)
    described = set(OPERATIONS)
    missing = sorted(routes - described)
    assert not missing, "routes without an entry in " + str(SPEC) + " (add one per method and path): " + \
        ", ".join(f"{method.upper()} {path}" for path, method in missing)
    stale = sorted(described - routes)
    assert not stale, "entries in " + str(SPEC) + " without a route (remove or fix them): " + \
        ", ".join(f"{method.upper()} {path}" for path, method in stale)


def test_the_described_actions_are_the_api_actions() -> None:
    parameters = description()["paths"]["/api/services/{name}/{action}"]["parameters"]
    enum = next(parameter["schema"]["enum"] for parameter in parameters if parameter.get("name") == "action")
    taken = sorted((*ACTIONS, *RUN_ACTIONS))
    assert sorted(enum) == taken, (
        f"the action enum of POST /api/services/{{name}}/{{action}} in {SPEC} is {sorted(enum)}, "
        f"the API takes {taken}: describe each action (or give it its own path)")


def test_every_path_parameter_is_described() -> None:
    for path, item in description()["paths"].items():
        names = set(re.findall(r"\{([^}]+)\}", path))
        declared = {parameter.get("name") or parameter["$ref"].rsplit("/", 1)[-1]
                    for parameter in item.get("parameters", [])}
        assert names <= declared, f"{path}: path parameters {sorted(names - declared)} are not described"


def test_the_description_is_served(app: App) -> None:
    response = app.client.get("/api/openapi.json")
    assert response.status_code == 200
    assert response.json() == description()
    assert response.headers["x-content-type-options"] == "nosniff"


# -- the property-based run ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def schema(app: App) -> Any:
    return schemathesis.openapi.from_asgi("/api/openapi.json", app.daemon.app)


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")  # schemathesis' own strategies
@pytest.mark.parametrize("path, method, mode", RUNS)
def test_no_request_to_any_operation_is_answered_with_a_5xx(schema: Any, path: str, method: str,
                                                           mode: GenerationMode) -> None:
    operation = schema[path][method]
    # Valid requests also go to the seeded service; an invalid one has nothing to break in a fixed name.
    names = ({"name": SERVICE},) if "{name}" in path and mode is GenerationMode.POSITIVE else ()
    seen: list[int] = []
    for fixed in ({}, *names):
        strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed or None)

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case: Any) -> None:
            for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
                response = case.call(headers=headers)
                count("api", response.status_code)
                seen.append(response.status_code)
                assert response.status_code < 500, (case.as_curl_command(), response.status_code,
                                                    response.text[:300])

        run()
    assert seen and max(seen) < 500
