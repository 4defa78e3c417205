"""Model-aware readiness end to end: two classifiers in one group answer the same demo
inputs differently; a revision whose demo breaks (or whose /info does not match the
manifest) is rolled back like a failed health check; ``deployer demo`` re-runs them.

One daemon serves the module; no test relies on another having run: each waits for
the services it reads to settle and reads the running revision's own answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import (
    EXAMPLE,
    GitRepo,
    local_source,
    start_daemon,
    stop_supervisord,
    wait_for,
    write_config,
)

TOKEN = "demo-api-token"
SERVER = (EXAMPLE / "server.py").read_text()
# A second algorithm for the same task: a crude negation-blind word counter.
COUNTER = SERVER.replace(
    "def classify(text: str) -> dict[str, object]:\n",
    "def classify(text: str) -> dict[str, object]:\n"
    "    words = WORD.findall(text.lower())\n"
    "    good = sum(LEXICON.get(word, 0) > 0 for word in words)\n"
    "    bad = sum(LEXICON.get(word, 0) < 0 for word in words)\n"
    "    label = 'positive' if good > bad else 'negative' if bad > good else 'neutral'\n"
    "    return {'label': label, 'scores': {label: 1.0}, 'note': '<script>alert(1)</script>'}\n\n\n"
    "def unused(text: str) -> dict[str, object]:\n",
)


def service(name: str, path: str, *, version: str = "1.0", expect: str = "", demo_keys: str = "[label, scores]") -> str:
    return f"""  - name: {name}
    path: {path}
    command: python server.py --port ${{PORT}}
    env: {{MODEL_VERSION: "{version}"}}
    group: sentiment
    health: {{path: /health, timeout: 20}}
    info: {{path: /info{", expect: {version: " + json.dumps(expect) + "}" if expect else ""}}}
    demo:
      - {{name: not-bad, input: demo/not-bad.json, json_keys: {demo_keys}}}
      - {{name: mixed, input: demo/mixed.json, max_latency_ms: 2000}}
"""


def files(lexicon: str = "", counter: str = "") -> dict[str, str | bytes | None]:
    inputs = {"demo/not-bad.json": '{"text": "not bad at all, never disappointing"}',
              "demo/mixed.json": '{"text": "great screen, awful battery"}'}
    tree: dict[str, str | bytes | None] = {"service.yaml": "services:\n" + (lexicon or service("lexicon", "lexicon"))
                                           + (counter or service("counter", "counter"))}
    for folder, code in (("lexicon", SERVER), ("counter", COUNTER)):
        tree[f"{folder}/server.py"] = code
        tree.update({f"{folder}/{name}": text for name, text in inputs.items()})
    return tree


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("demo")
    repo = GitRepo.create(root / "repo.git", root / "work")
    repo.commit(files(), "two classifiers")
    config, _ = write_config(root, sources=local_source("models"), interval=2)
    daemon = start_daemon(config, root / "state", env={"DEPLOYER_API_TOKEN": TOKEN})
    try:
        yield {"root": root, "repo": repo, "daemon": daemon}
    finally:
        daemon.stop()
        stop_supervisord(root / "state")


def settled(world: dict[str, Any], name: str, after: int = 0, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        detail = world["daemon"].service(name)
        newest = detail["attempts"][0] if detail and detail["attempts"] else None
        return detail if newest and newest["id"] > after and newest["outcome"] != "running" else None

    return wait_for(check, timeout, f"{name} to finish an attempt")


def demos(world: dict[str, Any], name: str) -> dict[str, Any]:
    response = world["daemon"].get(f"/api/services/{name}/demos")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_both_classifiers_pass_their_demos_and_answer_differently(world: dict[str, Any]) -> None:
    answers = {}
    for name in ("lexicon", "counter"):
        detail = settled(world, name)
        running = detail["running_revision"]
        # The attempt that made the running revision (a later one may have failed and rolled back to it).
        attempt = next((a for a in detail["attempts"] if a["revision"] == running and a["outcome"] == "succeeded"),
                       None)
        assert attempt is not None, detail["attempts"]
        assert [step["name"] for step in attempt["steps"]][-2:] == ["health", "demo"]
        run = next((run for run in demos(world, name)["runs"] if run["revision"] == running), None)
        assert run is not None, f"no demo answers for {name}'s running revision {running}"
        by_input = {result["name"]: result for result in run["results"]}
        assert set(by_input) == {"not-bad", "mixed"} and all(result["ok"] for result in by_input.values())
        answers[name] = json.loads(by_input["not-bad"]["text"])["label"]
    assert answers == {"lexicon": "positive", "counter": "negative"}  # negation handling differs
    groups = world["daemon"].get("/api/groups").json()
    assert groups == {"sentiment": ["counter", "lexicon"]}


def test_a_broken_demo_fails_the_gate_and_rolls_back(world: dict[str, Any]) -> None:
    repo = world["repo"]
    before = settled(world, "counter")
    broken = service("counter", "counter", version="2.0", demo_keys="[label, confidence]")
    repo.commit({"service.yaml": "services:\n" + service("lexicon", "lexicon") + broken}, "counter: expect confidence")
    followed = cli(world, "reconcile")  # follows the pass: a deploy rolled back is a failure
    assert followed.returncode == 1 and "rolled_back: counter" in followed.stdout, followed.stdout + followed.stderr
    detail = settled(world, "counter", after=before["attempts"][0]["id"])
    attempt = detail["attempts"][0]
    assert attempt["outcome"] == "rolled_back" and attempt["reason"] == "DemoFailed", attempt
    assert "not-bad" in attempt["message"] and "missing key confidence" in attempt["message"]
    assert detail["running_revision"] == before["running_revision"] and detail["healthy"]


def test_info_mismatch_fails_the_gate(world: dict[str, Any]) -> None:
    repo = world["repo"]
    before = settled(world, "lexicon")
    wrong = service("lexicon", "lexicon", version="3.0", expect="9.9")
    repo.commit({"service.yaml": "services:\n" + wrong + service("counter", "counter")}, "lexicon: wrong version")
    assert cli(world, "reconcile", "--no-wait").returncode == 0  # accepted; the attempt is read below
    detail = settled(world, "lexicon", after=before["attempts"][0]["id"])
    attempt = detail["attempts"][0]
    assert attempt["outcome"] == "rolled_back" and attempt["reason"] == "InfoMismatch", attempt
    assert "version: expected '9.9', got '3.0'" in attempt["message"]


def test_deployer_demo_reruns_against_the_running_revision(world: dict[str, Any]) -> None:
    settled(world, "lexicon")
    count = len(demos(world, "lexicon")["runs"])
    done = cli(world, "demo", "lexicon")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not-bad" in done.stdout and "mixed" in done.stdout and "ok" in done.stdout
    runs = demos(world, "lexicon")["runs"]
    assert len(runs) == count  # same revision: its newest answers were replaced, not a new column
    refused = cli(world, "demo", "lexicon", token="wrong")
    assert refused.returncode == 1 and "401" in refused.stderr


def cli(world: dict[str, Any], *args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEPLOYER_")}
    env["DEPLOYER_API_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "deployer", *args, "--url", world["daemon"].url],
                          cwd=world["root"], env=env, capture_output=True, text=True, timeout=120)
