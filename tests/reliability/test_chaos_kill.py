"""SIGKILL of deployer at random moments of blue-green deploys, round after round.

Each round pushes a new revision of a service that takes 1.5 s to load, kills the daemon at a random
moment of that deploy (checkout, build, start, gate, switch, drain or after), starts it again, and
waits for convergence. Throughout, a request loop through the gateway path and the sticky port must
see no failure; after each round exactly one slot's program is left, the new revision serves, and
no attempt is left without an outcome.

``DEPLOYER_CHAOS_ROUNDS`` (default 3) and ``DEPLOYER_CHAOS_SEED`` make a longer or a repeated run;
the seed is printed on failure.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from tests.e2e.test_gateway_bluegreen import MANIFEST, SERVER, Loop, make_world, settled, tear_down, version
from tests.helpers import start_daemon, wait_for
from tests.reliability.harness import history_complete

ROUNDS = int(os.environ.get("DEPLOYER_CHAOS_ROUNDS", "3"))
SEED = int(os.environ.get("DEPLOYER_CHAOS_SEED", str(random.SystemRandom().randrange(1 << 30))))


def step_now(daemon: Any) -> str:
    service = daemon.service("slow") or {}
    attempts = service.get("attempts") or [{}]
    steps = [step["name"] for step in attempts[0].get("steps", [])]
    return f"{attempts[0].get('outcome')}:{steps[-1] if steps else '-'}"


def ended(daemon: Any, sha: str) -> dict[str, Any]:
    """The service once an attempt at ``sha`` has ended after the restart (the interrupted one does not count:
    the restarted daemon gates that revision again)."""
    def check() -> dict[str, Any] | None:
        service = daemon.service("slow")
        attempt = service["last_attempt"] if service else None
        done = attempt and attempt["outcome"] not in ("running", "interrupted")
        return service if done and service["desired_sha"] == sha and service["running_sha"] == sha else None

    return wait_for(check, 90, f"an attempt at {sha[:7]} to end after the restart")


def test_sigkill_at_random_moments_of_blue_green_deploys(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    world = make_world(tmp_path, {"service.yaml": MANIFEST, "server.py": SERVER.format(version="v1", crash="")},
                       drain=1)
    killed_at: list[str] = []
    try:
        daemon, repo, gateway = world["daemon"], world["repo"], world["gateway"]
        first = settled(daemon, repo.shas[-1])
        path = f"{gateway}/ai/slow/predict"
        with Loop([path, f"http://127.0.0.1:{first['port']}/predict"]) as loop:
            for number in range(2, ROUNDS + 2):
                sha = repo.commit({"server.py": SERVER.format(version=f"v{number}", crash="")}, f"v{number}")
                daemon.request_pass()
                time.sleep(rng.uniform(0.0, 5.0))  # the random moment: anywhere from checkout to after the drain
                killed_at.append(step_now(daemon))
                daemon.process.send_signal(signal.SIGKILL)
                daemon.process.wait(10)
                world["daemon"] = daemon = start_daemon(world["config"], tmp_path / "state")
                service = ended(daemon, sha)
                assert service["last_attempt"]["outcome"] == "succeeded", (SEED, killed_at, service["last_attempt"])

                def one_program() -> list[str] | None:
                    programs = sorted(p.name for p in (tmp_path / "state" / "supervisor" / "programs").glob("*.conf"))
                    return programs if len(programs) == 1 else None

                wait_for(one_program, 60, "one slot's program left")
                assert version(path) == f"v{number}"
                history_complete(daemon, "slow")
        assert loop.failures == [] and loop.answers > 50, (SEED, killed_at, loop.failures[:5], loop.answers)
    finally:
        tear_down(world)
