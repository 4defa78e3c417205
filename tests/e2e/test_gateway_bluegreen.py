"""Blue/green through the real gateway: the daemon, its embedded nginx and supervisord, a service
that takes 1.5 s to load its "model", and a request loop through the gateway path and through the
service's sticky port that must see no failure while revisions change, fail, and nginx dies.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import unavailable
from tests.helpers import (
    Background,
    GitRepo,
    free_port,
    local_source,
    port_window,
    start_daemon,
    stop_supervisord,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.timeout(300)

SERVER = '''
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "{version}"
time.sleep(1.5)  # loading the model: the port opens only after this
{crash}

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall behind a proxy

    def do_GET(self):
        body = json.dumps({{"version": VERSION, "path": self.path}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''

MANIFEST = """name: slow
command: python server.py ${PORT}
health: {path: /health, timeout: 20}
gateway: {path: /ai/slow/}
"""


def nginx() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        unavailable("nginx not installed: apt-get install nginx (scripts/services.sh)")
        raise AssertionError("unreachable")
    return found


def make_world(tmp_path: Path, files: dict[str, str | bytes | None], *, drain: float = 0.5,
               extra: str = "", enabled: bool = True) -> dict[str, Any]:
    listen = free_port()
    slots = port_window()
    repo = GitRepo.create(tmp_path / "repo.git", tmp_path / "work")
    repo.commit(files, "v1")
    config, _ = write_config(tmp_path, sources=local_source("models"), extra=f"""
[gateway]
enabled = {str(enabled).lower()}
listen = "127.0.0.1:{listen}"
drain = {drain}
nginx = "{nginx()}"
{extra}""")
    text = config.read_text().replace("[ports]\n", f'[ports]\nslot_range = "{slots}-{slots + 9}"\n')
    config.write_text(text)
    daemon = start_daemon(config, tmp_path / "state")
    return {"root": tmp_path, "repo": repo, "daemon": daemon, "gateway": f"http://127.0.0.1:{listen}",
            "config": config}


def tear_down(world: dict[str, Any]) -> None:
    world["daemon"].stop()
    stop_supervisord(world["root"] / "state")
    for pid_file in (world["root"] / "state" / "gateway" / "nginx.pid",
                     world["root"] / "state" / "gateway" / "inner" / "nginx.pid"):  # the client-facing and inner ones
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGQUIT)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    world = make_world(tmp_path, {"service.yaml": MANIFEST, "server.py": SERVER.format(version="v1", crash="")})
    try:
        yield world
    finally:
        tear_down(world)


class Loop(Background):
    """Requests through the gateway path and the sticky port, side by side, counting failures."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__()
        self.urls, self.answers, self.failures, self.versions = urls, 0, [], set()

    def _run(self) -> None:
        # Keep-alive, as most clients are: connections are reused across every switch. httpx does not retry a
        # request on a connection the server closed, so a client-facing nginx reloaded by a switch would
        # show here (its old workers close idle keep-alive connections); only the inner nginx is.
        with httpx.Client(trust_env=False, timeout=5) as client:
            deadline = time.monotonic() + 240  # bounded, whatever happens to the test
            while not self._stop.is_set() and time.monotonic() < deadline:
                for url in self.urls:
                    try:
                        response = client.get(url)
                        if response.status_code == 200:
                            self.answers += 1
                            self.versions.add(response.json()["version"])
                        else:
                            self.failures.append(f"{url}: HTTP {response.status_code}")
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{url}: {type(exc).__name__}")
                time.sleep(0.02)


def version(url: str) -> str | None:
    try:
        return str(httpx.get(url, timeout=2).json()["version"])
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def settled(daemon: Any, sha: str, name: str = "slow") -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        service = daemon.service(name)
        attempt = service["last_attempt"] if service else None
        done = attempt and attempt["revision"] == service["desired_revision"] and attempt["outcome"] != "running"
        return service if done and service["desired_sha"] == sha else None

    return wait_for(check, 90, f"the attempt for {sha[:7]} to end")


def test_redeploys_and_a_failing_revision_lose_no_request(world: dict[str, Any]) -> None:
    daemon, repo, gateway = world["daemon"], world["repo"], world["gateway"]
    first = settled(daemon, repo.shas[-1])
    assert first["last_attempt"]["outcome"] == "succeeded" and first["slot"] == "blue"
    assert first["gateway_url"] == f"{gateway}/ai/slow/"
    sticky = f"http://127.0.0.1:{first['port']}/predict"
    assert version(f"{gateway}/ai/slow/predict") == "v1" and version(sticky) == "v1"
    assert httpx.get(f"{gateway}/ai/slow/x", timeout=2).json()["path"] == "/x"  # the prefix is stripped

    with Loop([f"{gateway}/ai/slow/predict", sticky]) as loop:
        for number in (2, 3):
            sha = repo.commit({"server.py": SERVER.format(version=f"v{number}", crash="")}, f"v{number}")
            daemon.request_pass()
            service = settled(daemon, sha)
            assert service["last_attempt"]["outcome"] == "succeeded", service["last_attempt"]
            wait_for(lambda n=number: version(sticky) == f"v{n}", 10, f"v{number} served")
        steps = [step["name"] for step in daemon.service("slow")["attempts"][0]["steps"]]
        assert steps[-3:] == ["health", "switch", "drain"]

        broken = repo.commit({"server.py": SERVER.format(version="v4", crash="raise SystemExit('no model')")},
                             "v4 cannot load its model")
        daemon.request_pass()
        failed = settled(daemon, broken)["last_attempt"]
        assert failed["outcome"] == "rolled_back", failed
        assert "kept serving" in failed["message"]
        time.sleep(0.5)  # a little more traffic on the slot that kept serving
    assert loop.failures == [] and loop.answers > 100, (loop.failures[:5], loop.answers)
    assert loop.versions == {"v1", "v2", "v3"}
    assert version(sticky) == "v3"
    service = daemon.service("slow")
    assert service["slot"] == "blue" and service["healthy"]  # v1 blue, v2 green, v3 blue; v4 never switched
    page = daemon.get("/services/slow").text
    assert "Traffic through the gateway" in page and f"rev {service['running_revision']}" in page
    assert "via the gateway · slot blue" in page
    metrics = daemon.get("/metrics").text
    assert f'deployer_gateway_requests_total{{code="2xx",revision="{service["running_revision"]}",service="slow"}}' \
        in metrics


def test_nginx_killed_is_restarted_by_the_next_pass(world: dict[str, Any]) -> None:
    daemon, gateway = world["daemon"], world["gateway"]
    service = settled(daemon, world["repo"].shas[-1])
    pid_file = world["root"] / "state" / "gateway" / "nginx.pid"
    killed = int(pid_file.read_text())
    os.kill(killed, signal.SIGKILL)
    daemon.request_pass()
    wait_for(lambda: "restarted" in daemon.log(), 30, "the pass to notice and restart nginx")
    assert int(pid_file.read_text()) != killed  # a new master, not the orphaned workers, serves
    wait_for(lambda: version(f"{gateway}/ai/slow/health") == "v1", 30, "the gateway answering")
    assert version(f"http://127.0.0.1:{service['port']}/health") == "v1"
    assert daemon.get("/healthz").status_code == 200
    assert "drift healed" in daemon.get("/").text  # the page says the gateway was repaired


def test_deployer_killed_while_the_old_slot_drains_converges_to_one_routed_slot(tmp_path: Path) -> None:
    world = make_world(tmp_path, {"service.yaml": MANIFEST, "server.py": SERVER.format(version="v1", crash="")},
                       drain=4)
    try:
        daemon, repo, gateway = world["daemon"], world["repo"], world["gateway"]
        first = settled(daemon, repo.shas[-1])
        path = f"{gateway}/ai/slow/predict"
        with Loop([path, f"http://127.0.0.1:{first['port']}/predict"]) as loop:
            repo.commit({"server.py": SERVER.format(version="v2", crash="")}, "v2")
            daemon.request_pass()

            def draining() -> bool:
                attempt = (daemon.service("slow") or {}).get("attempts", [{}])[0]
                return attempt.get("outcome") == "running" and \
                    [step["name"] for step in attempt.get("steps", [])][-1:] == ["switch"]

            wait_for(draining, 60, "the switch done and the old slot draining", interval=0.05)
            daemon.process.send_signal(signal.SIGKILL)
            daemon.process.wait(10)
            assert version(path) == "v2"  # the switch was confirmed live before the drain began
            world["daemon"] = daemon = start_daemon(world["config"], tmp_path / "state")

            def one_slot() -> dict[str, Any] | None:
                service = daemon.service("slow")
                programs = sorted(path.name for path in (tmp_path / "state" / "supervisor" / "programs").glob("*.conf"))
                return service if service and service["healthy"] and programs == ["slow--green.conf"] else None

            service = wait_for(one_slot, 60, "one slot left, routed and healthy")
        assert loop.failures == [] and loop.answers > 50, (loop.failures[:5], loop.answers)
        assert service["slot"] == "green" and version(path) == "v2"
        assert any(attempt["outcome"] == "interrupted" for attempt in service["attempts"])
    finally:
        tear_down(world)


def test_turning_the_gateway_on_moves_a_running_service_behind_it_with_one_short_handover(tmp_path: Path) -> None:
    world = make_world(tmp_path, {"service.yaml": MANIFEST, "server.py": SERVER.format(version="v1", crash="")},
                       enabled=False)
    try:
        daemon, repo, config = world["daemon"], world["repo"], world["config"]
        plain = settled(daemon, repo.shas[-1])
        assert plain["slot"] is None and plain["gateway_url"] is None
        sticky = f"http://127.0.0.1:{plain['port']}/predict"
        assert version(sticky) == "v1"
        outcomes: list[bool] = []  # every request on the sticky port, in order: answered or not
        stop = threading.Event()

        def loop() -> None:
            with httpx.Client(trust_env=False, timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as client:
                deadline = time.monotonic() + 200
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        outcomes.append(client.get(sticky).status_code == 200)
                    except httpx.HTTPError:
                        outcomes.append(False)
                    time.sleep(0.005)

        caller = threading.Thread(target=loop, daemon=True)
        caller.start()
        try:
            daemon.stop()  # the service goes on serving: supervisord runs it, not deployer
            config.write_text(config.read_text().replace("enabled = false", "enabled = true"))
            world["daemon"] = daemon = start_daemon(config, tmp_path / "state")

            def moved() -> dict[str, Any] | None:
                service = daemon.service("slow")
                return service if service and service["slot"] == "blue" and service["healthy"] else None

            service = wait_for(moved, 90, "the service moved behind the gateway")
            wait_for(lambda: len(outcomes) > 0 and all(outcomes[-20:]), 10, "the sticky port answering again")
        finally:
            stop.set()
            caller.join(10)
        switch = next(step for step in service["attempts"][0]["steps"] if step["name"] == "switch")
        assert f"port {plain['port']} taken over from slow's own process: free " in switch["output"], switch
        # The sticky port is nginx's now (it answers the marker), proxying to the slot; the old program is gone.
        assert httpx.get(f"http://127.0.0.1:{plain['port']}/.deployer/generation", timeout=2).status_code == 200
        assert version(sticky) == "v1" and service["gateway_url"] == f"{world['gateway']}/ai/slow/"
        def programs() -> list[str]:
            return sorted(path.name for path in (tmp_path / "state" / "supervisor" / "programs").glob("*.conf"))

        # Its process was stopped at the handover; the program itself is removed by then or by the next pass.
        wait_for(lambda: programs() == ["slow--blue.conf"], 30, f"only the slot's program left (have {programs()})")
        # One handover: the requests that found nobody on the port all fall in one stretch.
        failed = [index for index, answered in enumerate(outcomes) if not answered]
        assert len(outcomes) > 100 and outcomes[0] and outcomes[-1]
        assert not failed or all(not answered for answered in outcomes[failed[0]:failed[-1] + 1]), failed
    finally:
        tear_down(world)


DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
COPY www /www
CMD ["/bin/busybox", "sh", "-c", "/bin/busybox sleep 1; exec /bin/busybox httpd -f -p \\"$PORT\\" -h /www"]
"""


def test_a_container_behind_the_gateway_is_replaced_blue_green(tmp_path: Path, docker_api: Any) -> None:
    manifest = "name: boxed\nruntime: docker\nhealth: {path: /health, timeout: 20}\ngateway: {path: /ai/boxed/}\n"
    files: dict[str, str | bytes | None] = {
        "service.yaml": manifest, "Dockerfile": DOCKERFILE, "busybox": Path("/bin/busybox").read_bytes(),
        "www/health": "ok\n", "www/predict": '{"version": "v1"}\n'}
    world = make_world(tmp_path, files, extra="[docker]\nenabled = true\n")
    try:
        daemon, repo, gateway = world["daemon"], world["repo"], world["gateway"]
        (repo.work / "busybox").chmod(0o755)
        repo.commit({}, "busybox is executable")
        daemon.request_pass()
        wait_for(lambda: (s := daemon.service("boxed")) and s["healthy"] and s["slot"] and s, 120, "boxed served")
        path = f"{gateway}/ai/boxed/predict"
        with Loop([path]) as loop:
            for number in (2, 3):
                sha = repo.commit({"www/predict": f'{{"version": "v{number}"}}\n'}, f"v{number}")
                daemon.request_pass()
                assert settled(daemon, sha, name="boxed")["last_attempt"]["outcome"] == "succeeded"
        assert loop.failures == [] and loop.versions == {"v1", "v2", "v3"}, (loop.failures[:5], loop.versions)
        names = sorted(c["Names"][0] for c in docker_api.containers(filters={"label": "deployer.managed=true"})
                       if c["Names"][0].startswith("/boxed"))
        assert names == ["/boxed--blue"]  # v1 blue, v2 green, v3 blue: the old slot's container is gone
    finally:
        tear_down(world)
        for container in docker_api.containers(all=True, filters={"label": "deployer.managed=true"}):
            if container["Names"][0].startswith("/boxed"):
                docker_api.remove_container(container["Id"], force=True)
        for image in docker_api.images(name="deployer/boxed"):
            docker_api.remove_image(image["Id"], force=True)
