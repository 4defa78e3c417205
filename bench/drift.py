"""Benchmark 5: drift healing — a program or container removed by hand, until healthy again.

The daemon (``deployer serve`` under the span tracer, reconcile interval ``--interval``) runs two
services: the example service under Supervisor, and a busybox httpd container under Docker (its
image is built by deployer from a Dockerfile ``FROM`` a scratch+busybox base made here; nothing
is pulled). Each run waits a random part of the interval (so removals land at every phase of the
reconcile timer), removes the service by hand — Supervisor: delete its program file and
``supervisorctl update``; Docker: ``docker rm -f`` — and times until ``GET /health`` answers again.

Baseline, same run: the service's own boot — the same command started directly (the example's
``python server.py``; a container created and started from the same image, polled while it starts,
as deployer's is) until /health answers.
Target: at most one reconcile interval plus that boot time. The tracer splits each heal into
detection (removal -> the pass that notices) and repair (that pass -> healthy).

Run: ``.venv/bin/python bench/drift.py [--interval 5 --runs 4] [--docker off]`` (off: Supervisor only).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    VENV_BIN,
    Cleanup,
    DaemonProc,
    Report,
    busybox_image,
    free_port,
    free_window,
    health_json,
    innermost_breakdown,
    log,
    median,
    run,
    signed_push,
    start_daemon,
    terminate,
    wait_for,
    wait_health,
    write_config,
)
from tests.helpers import EXAMPLE, GitRepo

SECRET = "bench-webhook-secret"
OWNER = "bench"
# One poll request gives up after this: while the engine starts a container, docker-proxy accepts
# connections it cannot forward yet and they hang until the client's timeout (baseline polls alike).
ATTEMPT_TIMEOUT = 0.1


def base_image(cleanup: Cleanup) -> tuple[Any, str]:
    return busybox_image(cleanup)


def healthy_service(daemon: DaemonProc, name: str, after_attempt: int = 0) -> dict[str, Any] | None:
    service = daemon.service(name)
    last = (service or {}).get("last_attempt") or {}
    attempts = (service or {}).get("attempts") or []
    newest = attempts[0]["id"] if attempts else 0
    if service and service.get("healthy") and service.get("state") == "running" and newest > after_attempt \
            and last.get("outcome") not in (None, "running"):
        return service
    return None


def remove_by_hand(kind: str, daemon: DaemonProc, name: str, api: Any) -> None:
    if kind == "supervisor":
        (daemon.state_dir / "supervisor" / "programs" / f"{name}.conf").unlink()
        run([str(VENV_BIN / "supervisorctl"), "-c", str(daemon.supervisor_conf), "update"], timeout=60)
    else:
        for container in api.containers(all=True, filters={"label": [f"deployer.service={name}"]}):
            api.remove_container(container["Id"], force=True)


def boot_supervisor(port: int, checkout: Path) -> float:
    """The example service started directly: spawn to /health answering."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "server.py", "--port", str(port)], cwd=checkout,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return wait_health(port, lambda data: True, timeout=30) - started
    finally:
        terminate(process, 10)


def boot_docker(api: Any, image: str, port: int) -> float:
    """A container of the service's image created and started directly, polled throughout as deployer's
    is (a client polling while the engine starts it): create to /health answering."""
    import threading

    answered: list[float] = []
    poller = threading.Thread(target=lambda: answered.append(
        wait_health(port, lambda data: True, timeout=30, attempt_timeout=ATTEMPT_TIMEOUT)), daemon=True)
    poller.start()
    started = time.monotonic()
    host_config = api.create_host_config(port_bindings={port: ("127.0.0.1", port)}, init=True,
                                         restart_policy={"Name": "unless-stopped"})
    created = api.create_container(image, command=["/bin/busybox", "httpd", "-f", "-p", str(port), "-h", "/www"],
                                   ports=[port], host_config=host_config, labels={"deployer-bench": "boot"})
    try:
        api.start(created["Id"])
        poller.join(35)
        return answered[0] - started
    finally:
        with contextlib.suppress(Exception):
            api.remove_container(created["Id"], force=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=5.0, help="the daemon's [reconcile] interval, seconds")
    parser.add_argument("--runs", type=int, default=4, help="removals per runtime")
    parser.add_argument("--seed", type=int, default=7, help="for the random phase of each removal")
    parser.add_argument("--docker", choices=["on", "off"], default="on",
                        help="off: the Supervisor service only (no image, container or Docker call of the bench's)")
    parser.add_argument("--timeout", type=float, default=420, help="hard limit for the whole script, seconds")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    kinds = ("supervisor", "docker") if args.docker == "on" else ("supervisor",)
    report = Report("drift", "5. Drift healing: removed by hand -> healthy again",
                    params={"interval": args.interval, "runs": args.runs, "seed": args.seed, "kinds": kinds})
    with Cleanup(args.timeout) as cleanup:
        root = cleanup.tempdir("drift")
        prefix = f"drift{secrets.token_hex(2)}"
        names = {"supervisor": f"{prefix}-proc", "docker": f"{prefix}-box"}
        proc = GitRepo.create(root / "gitea" / OWNER / "proc.git", root / "work-proc")
        files = proc.copy_tree(EXAMPLE)
        files["service.yaml"] = (EXAMPLE / "service.yaml").read_text().replace("name: text-classify",
                                                                                 f"name: {names['supervisor']}")
        shas = {"proc": proc.commit(files, "example service")}
        api: Any = None
        if "docker" in kinds:
            api, base = base_image(cleanup)
            box = GitRepo.create(root / "gitea" / OWNER / "box.git", root / "work-box")
            shas["box"] = box.commit({
                "Dockerfile": f"FROM {base}\nCOPY www /www\n", "www/health": '{"status": "ok"}\n',
                "service.yaml": f"name: {names['docker']}\nruntime: docker\n"
                                "command: /bin/busybox httpd -f -p ${PORT} -h /www\n"
                                "health: {path: /health, timeout: 30}\n",
            }, "busybox service")
            cleanup.add("remove the bench containers and images", _remove_docker, api, names["docker"])
        names = {kind: names[kind] for kind in kinds}
        window = free_window(14200, 12)
        config = write_config(root / "deployer.toml", listen_port=free_port(), state_dir=root / "state",
                              port_first=window, port_count=10, interval=args.interval,
                              extra=f'[gitea]\nclone_base = "file://{root / "gitea"}"\nallowed_owners = ["{OWNER}"]\n')
        daemon = start_daemon(cleanup, config, root / "state", env={"DEPLOYER_WEBHOOK_SECRET": SECRET}, trace=True)
        for repo, sha in shas.items():
            status, _ = daemon.post("/hooks/gitea", *signed_push(OWNER, repo, "0" * 40, sha, SECRET))
            assert status == 202, status
        services = {kind: wait_for(lambda n=name: healthy_service(daemon, n), 180, f"{name} deployed", 0.2)
                    for kind, name in names.items()}
        ports = {kind: int(service["port"]) for kind, service in services.items()}
        checkout = next((root / "state" / "checkouts" / f"{OWNER}/proc").iterdir())
        image = _image_of(api, names["docker"]) if "docker" in kinds else ""

        samples: dict[str, list[dict[str, Any]]] = {"supervisor": [], "docker": []}
        boots: dict[str, list[float]] = {"supervisor": [], "docker": []}
        for index in range(args.runs):
            for kind in (kinds if index % 2 == 0 else tuple(reversed(kinds))):
                name = names[kind]
                before = int((daemon.service(name) or {})["attempts"][0]["id"])
                time.sleep(rng.uniform(0, args.interval))  # a random phase of the reconcile timer
                removed = time.monotonic()  # the clock starts with the removal command (conservative)
                remove_by_hand(kind, daemon, name, api)
                wait_for(lambda p=ports[kind]: health_json(p) is None, 10, f"{name} to be gone", 0.005)
                healthy = wait_health(ports[kind], lambda data: True, timeout=args.interval * 4 + 60,
                                      attempt_timeout=ATTEMPT_TIMEOUT)
                wait_for(lambda n=name, b=before: healthy_service(daemon, n, b), 120, f"{name} healed", 0.1)
                sample = {"total": healthy - removed, **_split(daemon, removed, healthy)}
                samples[kind].append(sample)
                log(f"{kind} run {index + 1}: healthy again after {sample['total']:.2f} s "
                    f"(detected after {sample.get('detect', float('nan')):.2f} s)")
            boots["supervisor"].append(boot_supervisor(window + 11, checkout))
            if "docker" in kinds:
                boots["docker"].append(boot_docker(api, image, window + 10))
        _report(report, samples, boots, args.interval)
        report.samples = {"runs": samples, "boot": boots}
    report.finish()
    return 0


def _split(daemon: DaemonProc, removed: float, healthy: float) -> dict[str, Any]:
    """Detection (removal -> start of the pass that repaired it) and repair (that pass start -> healthy)."""
    spans = wait_for(lambda: _repair_spans(daemon, removed, healthy), 30, "the repairing pass to end", 0.05)
    passes, deploys = spans
    deploy = deploys[0]
    repairing = next(s for s in passes if s["th"] == deploy["th"] and s["t0"] <= deploy["t0"] <= s["t1"])
    # A pass already running at the removal may be the one that sees it: detection is then 0.
    start = max(repairing["t0"], removed)
    mine = [s for s in daemon.spans() if s["th"] == repairing["th"] and repairing["t0"] <= s["t0"] <= healthy]
    breakdown = innermost_breakdown(mine, start, healthy, category=category)
    if os.environ.get("BENCH_DEBUG"):
        for span in sorted(mine, key=lambda x: x["t0"]):
            if span["t0"] < healthy + 1.5:
                print(f"  {span['t0'] - start:7.3f} {span['t1'] - start:7.3f} {span['n']}", file=sys.stderr)
        print(f"  healthy at {healthy - start:.3f}", file=sys.stderr)
    return {"detect": start - removed, "repair": healthy - start, "breakdown": breakdown}


def category(label: str) -> str:
    kind, _, rest = label.partition(".")
    if kind in ("rpc", "docker", "swarm", "sup", "dockerapi", "images"):
        return f"{kind}.{rest}"
    return {"git": "git", "store": "store (SQLite)", "render": "render+check program", "health": "health probe",
            "build": "env cache lookup", "loader": "manifest load"}.get(kind, f"own code in {label}")


def _repair_spans(daemon: DaemonProc, removed: float, healthy: float) -> tuple[list[Any], list[Any]] | None:
    spans = daemon.spans()
    passes = [s for s in spans if s["n"] == "rec.reconcile_source" and s["t1"] >= removed]
    deploys = sorted((s for s in spans if s["n"] == "rollout.deploy" and removed <= s["t0"] <= healthy),
                     key=lambda s: s["t0"])
    if not deploys or not any(s["th"] == deploys[0]["th"] and s["t0"] <= deploys[0]["t0"] <= s["t1"] for s in passes):
        return None
    return passes, deploys


def _image_of(api: Any, name: str) -> str:
    containers = api.containers(filters={"label": [f"deployer.service={name}"]})
    return str(containers[0]["Image"])


def _remove_docker(api: Any, name: str) -> None:
    for container in api.containers(all=True, filters={"label": [f"deployer.service={name}"]}):
        api.remove_container(container["Id"], force=True)
    for container in api.containers(all=True, filters={"label": ["deployer-bench=boot"]}):
        api.remove_container(container["Id"], force=True)
    for image in api.images(filters={"label": [f"deployer.service={name}"]}):
        with contextlib.suppress(Exception):
            api.remove_image(image["Id"], force=True)


def _report(report: Report, samples: dict[str, list[dict[str, Any]]], boots: dict[str, list[float]],
            interval: float) -> None:
    for kind in ("supervisor", "docker"):
        if not samples[kind]:
            continue
        totals = [s["total"] for s in samples[kind]]
        boot = median(boots[kind])
        target = interval + boot
        worst = max(totals)
        report.add(f"{kind}: removed -> healthy (median of {len(totals)})", median(totals), boot, "s",
                   target=f"<= {target:.2f} s", met=median(totals) <= target,
                   note=f"baseline: the service's own boot, started directly; target = interval {interval:g} s + boot")
        report.add(f"{kind}: removed -> healthy (worst)", worst, boot, "s", target=f"<= {target:.2f} s",
                   met=worst <= target, note="removals at random phases of the timer; APScheduler adds up to "
                                             f"{min(interval * 0.1, 5):.2f} s of jitter to the interval")
        keys = {key for s in samples[kind] for key in s.get("breakdown", {})}
        breakdown = {key: median([s.get("breakdown", {}).get(key, 0.0) for s in samples[kind]]) for key in keys}
        top = sorted(breakdown.items(), key=lambda item: -item[1])[:6]
        report.notes.append(f"{kind} repair, median seconds by innermost traced call: "
                            + ", ".join(f"{key} {value * 1000:.0f} ms" for key, value in top))
        detect = [s["detect"] for s in samples[kind] if "detect" in s]
        repair = [s["repair"] for s in samples[kind] if "repair" in s]
        if detect:
            report.add(f"  {kind}: detection (removal -> repairing pass starts)", median(detect), interval / 2, "s",
                       note="baseline: half an interval, the expected wait for a uniform removal time")
            report.add(f"  {kind}: repair (pass start -> healthy)", median(repair), boot, "s",
                       note="baseline: the service's own boot")


if __name__ == "__main__":
    sys.exit(main())
