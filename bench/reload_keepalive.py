"""Benchmark: keep-alive clients while the gateway changes, a slot switch vs a client-facing reload.

The focused experiment behind the gateway's two tiers. deployer's own gateway (``build_gateway``,
embedded, the real templates) routes one service to one of two loopback upstreams; ``--clients``
(3) httpx clients, each reusing its keep-alive connection, call it through the gateway path with
0-4 ms between requests. Phase one: ``--changes`` (200) slot switches (the upstream alternates:
only the inner nginx reloads). Phase two, the baseline: as many changes that reload the
client-facing nginx (a second service's route comes and goes), which is what every switch did
when the gateway was one nginx. Failed requests are counted by kind: a request sent on an idle
keep-alive connection that an old worker closes at that instant fails with "Server disconnected
without sending a response" (or a reset), and httpx, like many clients, does not retry it.

Run: ``.venv/bin/python bench/reload_keepalive.py [--changes 200] [--clients 3]``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Cleanup, Report, free_port, log
from deployer.gateway import GatewayConfig, NginxGateway, Route, build_gateway


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def upstream(cleanup: Cleanup) -> int:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Answer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    cleanup.add("stop an upstream", server.shutdown)
    return int(server.server_address[1])


def hammer(url: str, clients: int, change: Callable[[int], None], changes: int) -> dict[str, Any]:
    """Keep-alive clients on ``url`` while ``change(i)`` runs ``changes`` times; answers and failures by kind."""
    stop = threading.Event()
    answers = [0] * clients
    failures: dict[str, int] = {}
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(trust_env=False, timeout=5) as session:
            while not stop.is_set():
                try:
                    status = session.get(url).status_code
                    what = "" if status == 200 else f"HTTP {status}"
                except httpx.HTTPError as exc:
                    what = f"{type(exc).__name__}: {exc}"[:80]
                if what:
                    with lock:
                        failures[what] = failures.get(what, 0) + 1
                else:
                    answers[index] += 1
                time.sleep(random.random() * 0.004)

    threads = [threading.Thread(target=client, args=(index,), daemon=True) for index in range(clients)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    try:
        for number in range(changes):
            change(number)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    return {"answers": sum(answers), "failures": sum(failures.values()), "kinds": failures,
            "seconds": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600, help="the script's own time limit (s)")
    args = parser.parse_args()
    report = Report("reload_keepalive", "Keep-alive clients through the gateway: slot switches vs client-facing "
                    "reloads", params=vars(args))
    with Cleanup(args.timeout) as cleanup:
        state = cleanup.tempdir("reload-keepalive-")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        gateway: NginxGateway = build_gateway(GatewayConfig(state_dir=state, templates_dir=ROOT / "templates",
                                                            listen=f"127.0.0.1:{free_port()}", nginx=nginx, drain=2))
        cleanup.add("stop the gateway", gateway.shutdown, 5)
        ports = (upstream(cleanup), upstream(cleanup))
        other = Route("other", 1, (ports[1],), path="/other/")

        def service(number: int) -> Route:
            return Route("model", number + 1, (ports[number % 2],), path="/ai/model/")

        gateway.apply([service(0)])
        url = f"http://127.0.0.1:{gateway.listen.rpartition(':')[2]}/ai/model/predict"
        switches = hammer(url, args.clients, lambda number: gateway.apply([service(number)]), args.changes)
        log(f"slot switches: {switches}")
        def route_change(number: int) -> None:
            gateway.apply([service(0), *([other] if number % 2 else [])])

        reloads = hammer(url, args.clients, route_change, args.changes)
        log(f"client-facing reloads: {reloads}")
    report.samples = {"switches": switches, "client_facing_reloads": reloads}
    report.add(f"failed requests, {args.changes} changes, {args.clients} keep-alive clients", switches["failures"],
               reloads["failures"], "n", target="0 for slot switches", met=switches["failures"] == 0,
               note=f"of {switches['answers'] + switches['failures']} during slot switches (the inner nginx "
                    f"reloaded) and {reloads['answers'] + reloads['failures']} during changes that reload the "
                    f"client-facing nginx (one tier: every switch); kinds: {reloads['kinds'] or 'none'}")
    report.add("seconds for the changes (apply, confirmed live)", switches["seconds"], reloads["seconds"], "s")
    report.finish()


if __name__ == "__main__":
    main()
