"""The gateway with a real nginx (Debian's), on loopback: routing, switches under load, refusals, crashes.

Upstreams are small ``http.server``s started here; each test runs its own embedded nginx under
its own state dir and stops it afterwards. Missing nginx skips (fails in CI).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deployer.gateway import (
    GatewayConfig,
    GatewayError,
    GatewayRejected,
    GatewayUnavailable,
    NginxGateway,
    Route,
    TrafficReader,
    build_gateway,
    generation_of,
)
from tests.conftest import unavailable
from tests.helpers import ROOT, free_port, wait_for

pytestmark = pytest.mark.timeout(120)


def _nginx() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        unavailable("nginx not installed: apt-get install nginx (scripts/services.sh)")
        raise AssertionError("unreachable")
    return found


class _Echo(BaseHTTPRequestHandler):
    """Answers every request with which upstream it is, the path it got and the forwarded headers."""

    protocol_version = "HTTP/1.1"  # keep-alive, as nginx's upstream keepalive pool uses it
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

    def do_GET(self) -> None:
        body = json.dumps({"port": self.server.server_port, "path": self.path,  # type: ignore[attr-defined]
                           "prefix": self.headers.get("X-Forwarded-Prefix"),
                           "forwarded_for": self.headers.get("X-Forwarded-For"),
                           "host": self.headers.get("Host")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Upstream:
    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstreams() -> Iterator[list[Upstream]]:
    started: list[Upstream] = []
    for _ in range(2):
        server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Echo)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        started.append(Upstream(server, thread))
    yield started
    for upstream in started:
        upstream.stop()


@dataclass
class Gateways:
    """Gateways made by a test, all stopped afterwards (a master left behind is killed)."""

    tmp_path: Path
    made: list[NginxGateway] = field(default_factory=list)

    def make(self, state: str = "state", **values: object) -> NginxGateway:
        if "nginx" not in values:  # a test of a missing nginx needs none
            values["nginx"] = _nginx()
        config = GatewayConfig(state_dir=self.tmp_path / state, templates_dir=ROOT / "templates",
                               listen=f"127.0.0.1:{free_port()}", drain=2.0)
        gateway = build_gateway(replace(config, **values))  # type: ignore[arg-type]
        self.made.append(gateway)
        return gateway

    def close(self) -> None:
        for gateway in self.made:
            with contextlib.suppress(Exception):
                gateway.shutdown(timeout=5)


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Gateways]:
    made = Gateways(tmp_path)
    yield made
    made.close()


def get_text(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def get(port: int, path: str) -> tuple[int, dict[str, object] | str]:
    status, body = get_text(port, path)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def listen_port(gateway: NginxGateway) -> int:
    return int(gateway.listen.rpartition(":")[2])


def master_pid(gateway: NginxGateway) -> int:
    return int((gateway.backend.live_file.parent / "nginx.pid").read_text())


def our_nginx_processes(gateway: NginxGateway) -> list[int]:
    """Every nginx process of this gateway: those holding its error log open."""
    error_log = str(gateway.backend.live_file.parent / "error.log")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "cmdline").read_bytes().startswith(b"nginx: ") and any(
                    os.readlink(fd) == error_log for fd in (entry / "fd").iterdir()):
                found.append(int(entry.name))
    return found


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


# ---------------------------------------------------------------- routing


def test_routes_by_path_with_and_without_the_prefix_and_by_sticky_port(
        gateways: Gateways, upstreams: list[Upstream]) -> None:
    gateway = gateways.make()
    assert gateway.check() is None  # started fresh: nothing was repaired
    first, second = upstreams
    sticky = free_port()
    generation = gateway.apply([
        Route("text-classify", 3, (first.port,), port=sticky, path="/ai/text-classify/"),
        Route("image", 7, (second.port,), path="/ai/image/", strip_prefix=False),
    ])
    assert gateway.generation() == generation == generation_of(gateway.backend.live_file.read_text())
    port = listen_port(gateway)

    status, body = get(port, "/ai/text-classify/predict?x=1")
    assert status == 200 and isinstance(body, dict)
    assert body["port"] == first.port and body["path"] == "/predict?x=1" and body["prefix"] == "/ai/text-classify"
    assert body["forwarded_for"] == "127.0.0.1" and body["host"] == f"127.0.0.1:{port}"
    status, body = get(port, "/ai/image/info")
    assert status == 200 and isinstance(body, dict)
    assert body["port"] == second.port and body["path"] == "/ai/image/info" and body["prefix"] is None
    status, body = get(sticky, "/health")
    assert status == 200 and isinstance(body, dict) and body["port"] == first.port and body["path"] == "/health"
    assert get(port, "/nowhere/")[0] == 404
    status, body = get_text(sticky, "/.deployer/generation")  # as text: hex digits may parse as a JSON number
    assert (status, body) == (200, generation + "\n")
    # Applying the same table again changes nothing, and reloads nothing.
    pid = master_pid(gateway)
    assert gateway.apply([
        Route("image", 7, (second.port,), path="/ai/image/", strip_prefix=False),
        Route("text-classify", 3, (first.port,), port=sticky, path="/ai/text-classify/"),
    ]) == generation
    assert master_pid(gateway) == pid


def workers(gateway: NginxGateway) -> set[int]:
    """The client-facing master's worker processes (a reload replaces them all)."""
    master = master_pid(gateway)
    return {pid for pid in our_nginx_processes(gateway) if pid != master and parent(pid) == master}


def test_switching_upstreams_under_a_keep_alive_request_loop_loses_nothing_and_reloads_no_client_facing_worker(
        gateways: Gateways, upstreams: list[Upstream]) -> None:
    gateway = gateways.make()
    assert gateway.inner is not None
    first, second = upstreams
    sticky = free_port()
    port = listen_port(gateway)

    def table(*ports: int, revision: int) -> list[Route]:
        return [Route("text-classify", revision, ports, port=sticky, path="/ai/text-classify/")]

    edge = gateway.apply(table(first.port, revision=1))
    inner = [gateway.inner.generation()]
    facing = workers(gateway)
    answers: list[int] = []
    failures: list[str] = []
    done = threading.Event()

    def loop() -> None:
        # One keep-alive connection per port, reused for every request (as httpx, browsers and SDKs do).
        connections = {target: http.client.HTTPConnection("127.0.0.1", target, timeout=5) for target in (port, sticky)}
        for index in range(400):
            target, path = (port, "/ai/text-classify/predict") if index % 2 else (sticky, "/predict")
            try:
                connections[target].request("GET", path)
                response = connections[target].getresponse()
                body = json.loads(response.read())
                if response.status == 200 and response.getheader("X-Deployer-Revision") is None:
                    answers.append(int(body["port"]))
                else:
                    failures.append(f"{response.status} {body}")
            except (OSError, http.client.HTTPException) as exc:
                failures.append(repr(exc))
                connections[target].close()
            time.sleep(0.005)
        for connection in connections.values():
            connection.close()
        done.set()

    worker = threading.Thread(target=loop)
    worker.start()
    # A blue/green switch and back, several times: both, then the new one alone, ...
    steps = [(first.port, second.port), (second.port,), (second.port, first.port), (first.port,), (second.port,),
             (first.port,)]
    for revision, ports in enumerate(steps, start=2):
        time.sleep(0.2)
        assert gateway.apply(table(*ports, revision=revision)) == edge
        inner.append(gateway.inner.generation())
    worker.join(60)
    assert done.is_set()
    assert failures == []
    assert len(answers) == 400 and {first.port, second.port} <= set(answers)
    assert len(set(inner)) == len(inner)  # every switch made a new generation of the inner nginx ...
    assert gateway.generation() == edge and workers(gateway) == facing  # ... and never reloaded the facing one
    # After the last switch, new requests reach only the last table's upstream.
    assert {get(sticky, "/x")[1]["port"] for _ in range(10)} == {first.port}  # type: ignore[index]


# ---------------------------------------------------------------- refusals


def test_a_config_nginx_t_rejects_leaves_the_previous_one_live(
        gateways: Gateways, upstreams: list[Upstream], tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates" / "nginx", templates / "nginx")
    gateway = gateways.make(templates_dir=templates)
    route = Route("text-classify", 1, (upstreams[0].port,), path="/ai/text-classify/")
    live = gateway.apply([route])
    live_text = gateway.backend.live_file.read_text()
    routes_template = templates / "nginx" / "routes.conf.j2"
    routes_template.write_text(routes_template.read_text().replace("proxy_connect_timeout 2s;",
                                                                 "proxy_connect_timeout 2s;\nbogus_directive;"))
    with pytest.raises(GatewayRejected) as caught:
        gateway.apply([replace(route, upstreams=(upstreams[1].port,))])
    assert str(caught.value).startswith('[emerg] unknown directive "bogus_directive" in ')
    assert "nginx.conf.candidate:" in str(caught.value) and "\n" not in str(caught.value)
    assert gateway.generation() == live
    assert gateway.backend.live_file.read_text() == live_text
    status, body = get(listen_port(gateway), "/ai/text-classify/x")
    assert status == 200 and isinstance(body, dict) and body["port"] == upstreams[0].port


def test_a_sticky_port_another_socket_holds_fails_and_the_previous_generation_stays(
        gateways: Gateways, upstreams: list[Upstream]) -> None:
    """DESIGN §6's trap: nginx -t passes, the reload "succeeds", nginx keeps the old config."""
    gateway = gateways.make()
    first, second = upstreams
    route = Route("text-classify", 1, (first.port,), path="/ai/text-classify/")
    live = gateway.apply([route])
    live_text = gateway.backend.live_file.read_text()
    held = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", held))  # bound, not listening: only the reload's bind() finds out
        started = time.monotonic()
        with pytest.raises(GatewayError) as caught:
            gateway.apply([replace(route, upstreams=(second.port,), port=held)])
        message = str(caught.value)
        assert f"bind() to 127.0.0.1:{held} failed (98: Address already in use)" in message
        assert message.startswith("nginx kept its previous config")
        assert time.monotonic() - started < 8  # gave up when nginx did, not at the timeout
        assert gateway.generation() == live
        assert gateway.backend.live_file.read_text() == live_text
        status, body = get(listen_port(gateway), "/ai/text-classify/x")
        assert status == 200 and isinstance(body, dict) and body["port"] == first.port
        holder.listen()  # now anything can connect: refused before a reload is even tried
        with pytest.raises(GatewayError, match=f"port {held} of service 'text-classify' is held by another process"):
            gateway.apply([replace(route, port=held)])
    assert gateway.generation() == live
    # Once the port is free, the same table goes live.
    assert gateway.apply([replace(route, port=held)]) != live
    assert get(held, "/x")[0] == 200


# ---------------------------------------------------------------- the embedded process


def test_a_killed_nginx_is_restarted_by_the_next_check_and_a_second_gateway_adopts_it(
        gateways: Gateways, upstreams: list[Upstream]) -> None:
    gateway = gateways.make()
    route = Route("text-classify", 1, (upstreams[0].port,), path="/ai/text-classify/")
    live = gateway.apply([route])
    old = master_pid(gateway)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{old}").exists() or "Z" in Path(f"/proc/{old}/stat").read_text().split()[2],
             5, "the master to die")
    # Its workers go on serving the old sockets until they are reaped.
    note = gateway.check()
    assert note is not None and note.startswith(f"the gateway's nginx (pid {old}) exited; restarted it (pid ")
    new = master_pid(gateway)
    assert new != old and gateway.generation() == live
    assert all(parent(pid) == new for pid in our_nginx_processes(gateway) if pid != new)  # no orphan workers
    assert get(listen_port(gateway), "/ai/text-classify/x")[0] == 200

    twin = gateways.make(listen=gateway.listen)  # same state dir: a restarted deployer
    assert twin.check() is None
    assert master_pid(twin) == new
    masters = [pid for pid in our_nginx_processes(gateway) if parent(pid) != new]
    assert masters == [new]
    assert twin.apply([route, Route("image", 2, (upstreams[1].port,), path="/ai/image/")]) != live
    assert master_pid(twin) == new and gateway.generation() == twin.generation()


def test_a_killed_inner_nginx_is_restarted_with_its_sockets_and_routes_again(
        gateways: Gateways, upstreams: list[Upstream]) -> None:
    gateway = gateways.make()
    assert gateway.inner is not None
    route = Route("text-classify", 1, (upstreams[0].port,), port=free_port(), path="/ai/text-classify/")
    gateway.apply([route])
    inner = gateway.inner.generation()
    pid_file = gateway.backend.live_file.parent / "inner" / "nginx.pid"
    old = int(pid_file.read_text())
    os.kill(old, signal.SIGKILL)  # its socket files stay behind: a new master must not trip on them
    wait_for(lambda: not Path(f"/proc/{old}").exists() or "Z" in Path(f"/proc/{old}/stat").read_text().split()[2],
             5, "the master to die")
    note = gateway.check()
    assert note is not None and note.startswith(f"the gateway's inner nginx (pid {old}) exited; restarted it")
    assert int(pid_file.read_text()) != old and gateway.inner.generation() == inner
    for port, path in ((listen_port(gateway), "/ai/text-classify/x"), (route.port, "/x")):
        status, body = get(port or 0, path)
        assert status == 200 and isinstance(body, dict) and body["port"] == upstreams[0].port


def test_applies_from_two_threads_are_serialised(gateways: Gateways, upstreams: list[Upstream]) -> None:
    gateway = gateways.make()
    gateway.check()
    results: dict[str, str] = {}

    def apply(service: str, port: int) -> None:
        results[service] = gateway.apply([Route(service, 1, (port,), path=f"/{service}/")])

    threads = [threading.Thread(target=apply, args=(name, upstream.port))
               for name, upstream in zip(("a", "b"), upstreams, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 2 and results["a"] != results["b"]
    assert gateway.generation() in results.values()  # the last one applied is live, whole


def test_a_changed_listen_is_taken_by_the_next_apply(gateways: Gateways, upstreams: list[Upstream]) -> None:
    before = gateways.make()
    route = Route("text-classify", 1, (upstreams[0].port,), path="/ai/text-classify/")
    before.apply([route])
    before.shutdown()
    after = gateways.make(listen=f"127.0.0.1:{free_port()}")  # the operator moved [gateway] listen
    assert after.check() is None  # started from the file on disk, which still listens on the old port
    after.apply([route])
    assert get(listen_port(after), "/ai/text-classify/x")[0] == 200
    with pytest.raises(OSError):
        get(listen_port(before), "/ai/text-classify/x")


def test_nginx_missing_is_unavailable_with_the_fix(gateways: Gateways) -> None:
    with pytest.raises(GatewayUnavailable, match=r"^no-such-nginx not found: apt-get install nginx"):
        gateways.make(nginx="no-such-nginx").check()
    with pytest.raises(GatewayUnavailable, match=r"^nginx not found at /nonexistent/nginx"):
        gateways.make(state="other", nginx="/nonexistent/nginx").check()


def test_a_listen_port_held_at_start_is_unavailable_with_nginxs_words(gateways: Gateways) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        gateway = gateways.make(listen=f"127.0.0.1:{port}")
        with pytest.raises(GatewayUnavailable) as caught:
            gateway.check()
    assert str(caught.value).startswith(f"cannot start nginx: [emerg] bind() to 127.0.0.1:{port} failed (98: ")


# ---------------------------------------------------------------- traffic


def test_requests_through_the_gateway_are_counted_per_service_and_revision(
        gateways: Gateways, upstreams: list[Upstream]) -> None:
    gateway = gateways.make()
    reader = TrafficReader(gateway.access_log)
    sticky = free_port()
    gateway.apply([Route("text-classify", 3, (upstreams[0].port,), port=sticky, path="/ai/text-classify/"),
                   Route("image", None, (upstreams[1].port,), path="/ai/image/")])
    for _ in range(4):
        get(listen_port(gateway), "/ai/text-classify/predict")
    get(sticky, "/predict")
    get(listen_port(gateway), "/ai/image/x")
    get(listen_port(gateway), "/nowhere/")  # no route: not counted
    gateway.apply([Route("text-classify", 4, (upstreams[1].port,), port=sticky, path="/ai/text-classify/")])
    get(sticky, "/predict")

    def counted() -> dict[tuple[str, int | None], tuple[int, dict[str, int]]] | None:
        stats = {(t.service, t.revision): (t.requests, t.codes) for t in reader.read()}
        return stats if sum(requests for requests, _ in stats.values()) == 7 else None

    stats = wait_for(counted, 5, "the access log to show 7 requests")
    assert stats == {("text-classify", 3): (5, {"2xx": 5}), ("text-classify", 4): (1, {"2xx": 1}),
                     ("image", None): (1, {"2xx": 1})}
    assert reader.malformed == 0


# ---------------------------------------------------------------- external mode


@dataclass
class OperatorNginx:
    """An nginx run "by the operator": its own nginx.conf including conf.d/*.conf inside http {}."""

    prefix: Path
    nginx: str

    @property
    def main(self) -> Path:
        return self.prefix / "nginx.conf"

    def command(self, *args: str) -> str:
        return f"{self.nginx} -e {self.prefix}/error.log -p {self.prefix}/ -c {self.main} {' '.join(args)}".strip()

    def start(self) -> None:
        temp = "\n".join(f"    {kind}_temp_path {self.prefix}/{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.prefix / "conf.d").mkdir(parents=True)
        self.main.write_text(f"pid {self.prefix}/nginx.pid;\nerror_log {self.prefix}/error.log;\n"
                             f"events {{}}\nhttp {{\n{temp}\n    include {self.prefix}/conf.d/*.conf;\n}}\n")
        assert os.system(self.command()) == 0

    def stop(self) -> None:
        os.system(self.command("-s", "quit") + " 2>/dev/null")
        pid_file = self.prefix / "nginx.pid"
        wait_for(lambda: not pid_file.exists(), 10, "the operator's nginx to stop")


def test_external_mode_writes_tests_and_reloads_the_operators_nginx(
        gateways: Gateways, upstreams: list[Upstream], tmp_path: Path) -> None:
    operator = OperatorNginx(tmp_path / "operator", _nginx())
    operator.start()
    try:
        templates = tmp_path / "templates"
        shutil.copytree(ROOT / "templates" / "nginx", templates / "nginx")
        conf = operator.prefix / "conf.d" / "deployer.conf"
        gateway = gateways.make(conf_path=conf, templates_dir=templates, reload_command=operator.command("-s reload"),
                                test_command=operator.command("-t -q"))
        assert gateway.check() is None  # nothing written yet
        route = Route("text-classify", 1, (upstreams[0].port,), path="/ai/text-classify/")
        live = gateway.apply([route])
        assert gateway.generation() == live and generation_of(conf.read_text()) == live
        assert "http {" not in conf.read_text() and "pid " not in conf.read_text()
        status, body = get(listen_port(gateway), "/ai/text-classify/x")
        assert status == 200 and isinstance(body, dict) and body["port"] == upstreams[0].port
        assert not (gateway.backend.live_file.parent / "nginx.pid").exists()  # no nginx of deployer's own

        routes_template = templates / "nginx" / "routes.conf.j2"
        routes_template.write_text(routes_template.read_text().replace("keepalive 16;", "keepalive 16;\nbogus;"))
        text = conf.read_text()
        with pytest.raises(GatewayRejected, match=r'^\[emerg\] unknown directive "bogus" in .*deployer\.conf:\d+$'):
            gateway.apply([replace(route, upstreams=(upstreams[1].port,))])
        assert conf.read_text() == text and gateway.generation() == live  # the file was put back
        assert sorted(path.name for path in conf.parent.iterdir()) == ["deployer.conf"]  # no leftovers
        assert gateway.check() is None
    finally:
        operator.stop()
    with pytest.raises(GatewayUnavailable, match=r"does not answer on .*: is it running, and does its http"):
        gateway.check()


def test_logs_past_their_size_are_rotated_and_the_reader_follows(
        gateways: Gateways, upstreams: list[Upstream], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("deployer.gateway.embedded.ACCESS_LOG_MAX", 200)
    gateway = gateways.make()
    reader = TrafficReader(gateway.access_log)
    gateway.apply([Route("text-classify", 1, (upstreams[0].port,), path="/ai/text-classify/")])
    get(listen_port(gateway), "/ai/text-classify/x")
    wait_for(lambda: reader.read(), 5, "the first request in the log")  # the reader holds the file open now
    for _ in range(2):
        get(listen_port(gateway), "/ai/text-classify/x")  # in the log, not read yet when it is renamed
    assert gateway.check() is None  # rotates: access.log -> access.log.1, USR1 to the master
    rotated = gateway.access_log.with_name("access.log.1")
    assert rotated.exists()
    wait_for(gateway.access_log.exists, 5, "nginx to open a new access log")
    for _ in range(2):
        get(listen_port(gateway), "/ai/text-classify/x")

    def five() -> bool:
        return sum(traffic.requests for traffic in reader.read()) == 5

    # Workers reopen their log a moment after the master: the last lines may land in either file.
    wait_for(five, 5, "the reader to count requests on both sides of the rotation")
    assert len(rotated.read_text().splitlines()) >= 3
    assert len(rotated.read_text().splitlines()) + len(gateway.access_log.read_text().splitlines()) == 5
