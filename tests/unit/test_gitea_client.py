"""GiteaClient against the Gitea stand-in over loopback HTTP, plus the stand-in's own fidelity (WEBHOOKS.md §3)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest

from deployer.errors import Reason, StalledError, TransientError
from deployer.gitea import (
    DESCRIPTION_LIMIT,
    CommitState,
    GiteaClient,
    GiteaError,
    GiteaRejected,
    description_text,
    state_for,
)
from deployer.gitea.status import _Backoff
from deployer.model.status import Outcome
from tests.gitea_standin import GiteaStandIn, combined_state, token_from_header

SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
OTHER = "89e6c98d92887913cadf06b2adb97f26cde4849b"
REPO = "acme/models"


@pytest.fixture
def repo(gitea: GiteaStandIn) -> GiteaStandIn:
    gitea.add_repo("acme", "models", [SHA, OTHER], branches={"main": SHA})
    return gitea


@pytest.fixture
def client(repo: GiteaStandIn) -> Iterator[GiteaClient]:
    with GiteaClient(repo.url, repo.token, timeout=2.0) as client:
        yield client


def test_version_needs_no_token(gitea: GiteaStandIn) -> None:
    with GiteaClient(gitea.url, None) as client:
        assert client.version() == "1.26.0"
    assert gitea.requests()[-1].authorization is None


def test_set_status_creates_a_status_with_every_field(client: GiteaClient, repo: GiteaStandIn) -> None:
    client.set_status(REPO, SHA, CommitState.SUCCESS, context="deployer/text-classify",
                      description="healthy after 2.1s", target_url="http://deployer/services/text-classify")

    [row] = repo.statuses(REPO, SHA)
    assert row["status"] == "success"  # Gitea answers the state under "status"
    assert (row["context"], row["description"]) == ("deployer/text-classify", "healthy after 2.1s")
    assert row["target_url"] == "http://deployer/services/text-classify"
    assert row["creator"]["login"] == "deployer-bot" and row["id"] == 1
    assert repo.requests("POST")[-1].authorization == f"token {repo.token}"


def test_abbreviated_sha_is_expanded_by_gitea(client: GiteaClient, repo: GiteaStandIn) -> None:
    client.set_status(REPO, SHA[:7], "pending", context="deployer/a", description="deploying")
    assert repo.statuses(REPO, SHA)[0]["status"] == "pending"


@pytest.mark.parametrize("state", ["running", "SUCCESS", "", "skipped"])
def test_an_invalid_state_is_refused_before_any_request(client: GiteaClient, repo: GiteaStandIn, state: str) -> None:
    with pytest.raises(ValueError, match="is not a valid CommitState"):
        client.set_status(REPO, SHA, state, context="deployer/a", description="x")
    assert repo.requests("POST") == []


@pytest.mark.parametrize(("repo_name", "sha"),
                         [("acme", SHA), ("acme/models/x", SHA), (REPO, "abc"), (REPO, "xyz1234")])
def test_malformed_repo_or_sha_is_a_value_error(client: GiteaClient, repo_name: str, sha: str) -> None:
    with pytest.raises(ValueError):
        client.set_status(repo_name, sha, "success", context="deployer/a", description="x")


def test_description_is_trimmed_to_one_line_and_capped(client: GiteaClient, repo: GiteaStandIn) -> None:
    client.set_status(REPO, SHA, "failure", context=" deployer/a ", description="  health check failed:\n" + "x" * 300)
    [row] = repo.statuses(REPO, SHA)
    assert len(row["description"]) == DESCRIPTION_LIMIT
    assert row["description"].startswith("health check failed: xxx") and row["description"].endswith("…")
    assert row["context"] == "deployer/a"
    assert description_text("  ok  ") == "ok"


def test_statuses_lists_newest_first(client: GiteaClient) -> None:
    for state in ("pending", "failure", "success"):
        client.set_status(REPO, SHA, state, context="deployer/a", description=state)
    assert [row["status"] for row in client.statuses(REPO, SHA)] == ["success", "failure", "pending"]


def test_wrong_token_is_rejected_and_never_shown(repo: GiteaStandIn) -> None:
    secret = "wrong-token-0123456789"
    with GiteaClient(repo.url, secret) as client, pytest.raises(GiteaRejected) as caught:
        client.set_status(REPO, SHA, "success", context="deployer/a", description="x")
    assert caught.value.status_code == 401 and isinstance(caught.value, StalledError)
    assert "token" in str(caught.value) and secret not in str(caught.value) and secret not in repr(client)


def test_token_without_write_scope_is_forbidden(repo: GiteaStandIn) -> None:
    repo.add_token("read-only-token", "viewer", scopes=["read:repository"])
    with GiteaClient(repo.url, "read-only-token") as client, pytest.raises(GiteaRejected) as caught:
        client.set_status(REPO, SHA, "success", context="deployer/a", description="x")
    assert caught.value.status_code == 403 and "write:repository" in str(caught.value)


def test_unknown_repo_is_rejected(client: GiteaClient) -> None:
    with pytest.raises(GiteaRejected) as caught:
        client.set_status("acme/missing", SHA, "success", context="deployer/a", description="x")
    assert caught.value.status_code == 404


def test_unknown_sha_is_a_transient_500_like_gitea(client: GiteaClient) -> None:
    with pytest.raises(GiteaError) as caught:
        client.set_status(REPO, "0" * 40, "success", context="deployer/a", description="x")
    assert caught.value.status_code == 500 and isinstance(caught.value, TransientError)


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_and_throttling_are_transient(client: GiteaClient, repo: GiteaStandIn, status: int) -> None:
    repo.fail_next(1, status)
    with pytest.raises(GiteaError) as caught:
        client.set_status(REPO, SHA, "success", context="deployer/a", description="x")
    assert caught.value.status_code == status
    client.set_status(REPO, SHA, "success", context="deployer/a", description="x")  # the next one goes through


def test_unreachable_gitea_is_transient_and_the_message_names_no_secret(repo: GiteaStandIn) -> None:
    secret = repo.token
    url = repo.url.replace("http://", f"http://deployer:{secret}@")  # a token in the URL is used as the token
    with GiteaClient(url, None, timeout=1.0) as client:
        client.set_status(REPO, SHA, "success", context="deployer/a", description="x")
        assert client.url == repo.url and repo.requests("POST")[-1].authorization == f"token {secret}"
        repo.down()
        with pytest.raises(GiteaError) as caught:
            client.set_status(REPO, SHA, "success", context="deployer/a", description="x")
    assert "unreachable" in str(caught.value) and secret not in str(caught.value)
    assert repo.url in str(caught.value)


def test_no_token_is_rejected_without_a_request(repo: GiteaStandIn) -> None:
    with GiteaClient(repo.url, "  ") as client, pytest.raises(GiteaRejected, match="no gitea token"):
        client.set_status(REPO, SHA, "success", context="deployer/a", description="x")
    assert repo.requests("POST") == []


def _mocked(response: httpx.Response) -> GiteaClient:
    return GiteaClient("https://gitea.example/", "tkn-secret", transport=httpx.MockTransport(lambda _: response))


def test_retry_after_is_kept_and_echoed_token_is_scrubbed() -> None:
    answer = httpx.Response(429, headers={"Retry-After": "7"}, json={"message": "slow down, tkn-secret"})
    with pytest.raises(GiteaError) as caught:
        _mocked(answer).set_status(REPO, SHA, "success", context="c", description="d")
    assert caught.value.retry_after == 7.0 and "tkn-secret" not in str(caught.value) and "***" in str(caught.value)


def test_a_redirect_is_a_configuration_problem() -> None:
    answer = httpx.Response(301, headers={"Location": "https://u:p@gitea.example/new/api/v1/version"})
    with pytest.raises(GiteaRejected) as caught:
        _mocked(answer).version()
    assert "redirected to https://gitea.example/new/" in str(caught.value) and "u:p" not in str(caught.value)


def test_a_page_that_is_not_the_api_is_rejected() -> None:
    with pytest.raises(GiteaRejected, match="not JSON"):
        _mocked(httpx.Response(200, text="<html>login</html>")).version()


def test_base_url_may_carry_api_path_and_slash() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"version": "1.24.0"})

    client = GiteaClient("https://host/gitea/api/v1/", None, transport=httpx.MockTransport(handler))
    assert client.version() == "1.24.0" and seen == ["https://host/gitea/api/v1/version"]


@pytest.mark.parametrize("url", ["", "gitea.example", "ftp://gitea.example", "http://"])
def test_a_base_url_that_is_not_http_is_a_value_error(url: str) -> None:
    with pytest.raises(ValueError, match="gitea url"):
        GiteaClient(url, None)


@pytest.mark.parametrize(("outcome", "reason", "state"), [
    (Outcome.SUCCEEDED, Reason.RECONCILIATION_SUCCEEDED, CommitState.SUCCESS),
    (Outcome.RUNNING, "", CommitState.PENDING),
    (Outcome.FAILED, Reason.HEALTH_CHECK_FAILED, CommitState.FAILURE),
    (Outcome.ROLLED_BACK, Reason.HEALTH_CHECK_FAILED, CommitState.FAILURE),
    (Outcome.FAILED, Reason.MANIFEST_INVALID, CommitState.FAILURE),
    (Outcome.FAILED, Reason.RUNTIME_UNAVAILABLE, CommitState.ERROR),
    (Outcome.FAILED, "InternalError", CommitState.ERROR),
    (Outcome.INTERRUPTED, Reason.INTERRUPTED, CommitState.ERROR),
])
def test_state_for_outcome(outcome: Outcome, reason: str, state: CommitState) -> None:
    assert state_for(outcome, reason) is state


def test_backoff_is_exponential_capped_jittered_and_honours_retry_after() -> None:
    exact = _Backoff(first=1.0, maximum=10.0, jitter=0.0)
    assert [exact.delay(tries) for tries in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert exact.delay(1, retry_after=5.0) == 5.0 and exact.delay(1, retry_after=99.0) == 10.0
    assert _Backoff(1.0, 10.0, 0.5, random=lambda: 1.0).delay(2) == 1.0


# The stand-in itself: it must behave like Gitea or the tests above prove nothing.


@pytest.mark.parametrize(("header", "token"), [
    ("token abc", "abc"), ("Bearer abc", "abc"), ("TOKEN abc", "abc"), ("bearer   abc", "abc"),
    ("token a b", None), ("abc", None), ("Digest abc", None),
    ("Basic " + base64.b64encode(b"bot:abc").decode(), "abc"),
    ("Basic " + base64.b64encode(b"abc:x-oauth-basic").decode(), "abc"),
    ("Basic " + base64.b64encode(b"abc:").decode(), "abc"),
    ("Basic %%%", None),
])
def test_standin_parses_authorization_like_gitea(header: str, token: str | None) -> None:
    assert token_from_header(header) == token


def _post(gitea: GiteaStandIn, auth: str | None, body: object, sha: str = SHA) -> httpx.Response:
    headers = {"Authorization": auth} if auth else {}
    return httpx.post(f"{gitea.url}/api/v1/repos/{REPO}/statuses/{sha}", json=body, headers=headers)


def test_standin_auth_schemes_and_errors(repo: GiteaStandIn) -> None:
    body = {"state": "success", "context": "c"}
    basic = "Basic " + base64.b64encode(f"anyone:{repo.token}".encode()).decode()
    for auth in (f"token {repo.token}", f"Bearer {repo.token}", f"TOKEN {repo.token}", basic):
        assert _post(repo, auth, body).status_code == 201
    assert _post(repo, None, body).status_code == 401
    assert _post(repo, f"token {repo.token} extra", body).status_code == 401  # three fields: anonymous
    assert _post(repo, "token nope", body).status_code == 401
    assert httpx.get(f"{repo.url}/api/v1/version", headers={"Authorization": "token nope"}).status_code == 401
    missing = httpx.post(f"{repo.url}/api/v1/repos/acme/none/statuses/{SHA}", json=body,
                         headers={"Authorization": f"token {repo.token}"})
    assert missing.status_code == 404


def test_standin_stores_any_state_trimmed_and_answers_500_for_unknown_commits(repo: GiteaStandIn) -> None:
    auth = f"token {repo.token}"
    answer = _post(repo, auth, {"state": "bogus", "context": "  c  ", "description": " d ", "target_url": " u "})
    assert answer.status_code == 201
    assert {key: answer.json()[key] for key in ("status", "context", "description", "target_url")} == {
        "status": "bogus", "context": "c", "description": "d", "target_url": "u"}
    assert set(answer.json()) == {"id", "status", "target_url", "description", "url", "context", "creator",
                                  "created_at", "updated_at"}
    assert _post(repo, auth, {"state": "success"}, sha="0" * 40).status_code == 500
    assert _post(repo, auth, {"state": "success"}, sha=SHA[:7]).json()["url"].endswith(f"/statuses/{SHA}")


def test_standin_combined_status_takes_the_newest_per_context(repo: GiteaStandIn) -> None:
    auth = f"token {repo.token}"
    for context, state in (("a", "pending"), ("b", "failure"), ("a", "success"), ("b", "success")):
        _post(repo, auth, {"state": state, "context": context})
    combined = httpx.get(f"{repo.url}/api/v1/repos/{REPO}/commits/main/status").json()
    assert (combined["state"], combined["sha"], combined["total_count"]) == ("success", SHA, 2)
    assert [row["context"] for row in combined["statuses"]] == ["b", "a"]
    empty = httpx.get(f"{repo.url}/api/v1/repos/{REPO}/commits/{OTHER}/status").json()
    assert (empty["state"], empty["total_count"], empty["statuses"]) == ("", 0, None)


@pytest.mark.parametrize(("states", "combined"), [
    (["success", "warning", "skipped"], "success"), (["success", "pending"], "pending"),
    (["success", "error"], "failure"), (["pending", "failure"], "failure"), (["bogus"], "pending"),
])
def test_standin_combined_state_rules(states: list[str], combined: str) -> None:
    assert combined_state(states) == combined


def test_standin_listing_filters_and_pages(repo: GiteaStandIn) -> None:
    auth = f"token {repo.token}"
    for n in range(5):
        _post(repo, auth, {"state": "success" if n % 2 else "pending", "context": f"c{n}"})
    url = f"{repo.url}/api/v1/repos/{REPO}/statuses/{SHA}"
    assert [row["id"] for row in httpx.get(url, params={"limit": 2, "page": 2}).json()] == [3, 2]
    assert [row["id"] for row in httpx.get(url, params={"state": "success"}).json()] == [4, 2]
    assert [row["id"] for row in httpx.get(url, params={"sort": "oldest"}).json()] == [1, 2, 3, 4, 5]
    assert httpx.get(url).headers["X-Total-Count"] == "5"
