"""Benchmark 3: webhook ingestion under a burst, and coalescing.

Burst: ``--rate`` signed push webhooks per second for ``--seconds`` on loopback (open loop: each
request leaves at its scheduled time whatever the answers), round-robin across ``--repos``
repositories, each a copy of the example service. Before each request the repository's branch
really moves to the pushed commit (a code-only change), as a push would. Reported: ack latency
p50/p99 (client-side, connection included), errors (non-2xx, timeouts, resets), deliveries
recorded, deploys started, and lost pushes: repositories whose last pushed commit is not what
runs (healthy) once the daemon is idle again.

Baseline in the same run: the same requests against a minimal receiver on the same server stack
(uvicorn + Starlette; signature check and JSON parse, no store) — the floor of an
acknowledgement on this machine.

Coalescing: 100 pushes to one repository within 1 s; the last commit must end up deployed with at
most 2 deploys (a deploy per push would start 100).

Run: ``.venv/bin/python bench/webhook_burst.py [--rate 200 --seconds 10 --repos 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    RESULTS,
    ROOT,
    Cleanup,
    DaemonProc,
    PySpy,
    Report,
    cpu_seconds,
    fast_import_commits,
    find_py_spy,
    free_port,
    free_window,
    http_get,
    log,
    machine_cpu,
    profile_note,
    quantile,
    set_ref,
    signed_push,
    start_daemon,
    terminate,
    tree_cpu,
    wait_for,
    write_config,
)
from tests.helpers import EXAMPLE, GitRepo

SECRET = "bench-webhook-secret"
OWNER = "bench"
P99_TARGET = 0.020
COALESCE_PUSHES = 100
GITEA_TIMEOUT = 5.0


@dataclass
class Repo:
    name: str  # repository and service name
    bare: Path
    first: str
    commits: list[str] = field(default_factory=list)


@dataclass
class Burst:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    late_starts: int = 0  # requests that left more than 5 ms after their scheduled time
    duration: float = 0.0
    started: float = 0.0  # time.monotonic() at the first request (system-wide: lines up with daemon-side traces)
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (sent, seconds after the start; latency)


def make_repos(root: Path, count: int, commits: int) -> list[Repo]:
    repos = []
    manifest = (EXAMPLE / "service.yaml").read_text()
    for index in range(count):
        name = f"burst-{index:02d}"
        repo = GitRepo.create(root / "gitea" / OWNER / f"{name}.git", root / "work" / name)
        files = repo.copy_tree(EXAMPLE)
        files["service.yaml"] = manifest.replace("name: text-classify", f"name: {name}")
        files["build.txt"] = "initial\n"
        first = repo.commit(files, "example service")
        made = fast_import_commits(repo.bare, "refs/bench/next", first, "build.txt",
                                   [f"build {i}\n" for i in range(commits)])
        repos.append(Repo(name, repo.bare, first, made))
    return repos


def raw_request(port: int, body: bytes, headers: dict[str, str]) -> bytes:
    head = ["POST /hooks/gitea HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}",
            "Connection: close", *(f"{key}: {value}" for key, value in headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _send(port: int, request: bytes, timeout: float) -> tuple[str, float]:
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                await writer.drain()
                status_line = await reader.readline()
                await reader.read()  # Connection: close - the server closes after the answer
            finally:
                writer.close()
        status = status_line.split(b" ")[1].decode() if status_line.startswith(b"HTTP/") else "bad-answer"
    except TimeoutError:
        status = "timeout"
    except OSError as exc:
        status = type(exc).__name__
    return status, time.monotonic() - started


async def _burst(port: int, plan: list[tuple[Path, str, bytes]], rate: float, timeout: float) -> Burst:
    result = Burst()
    tasks = []
    started = result.started = time.monotonic()
    for index, (bare, sha, request) in enumerate(plan):
        due = started + index / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            result.late_starts += 1
        set_ref(bare, "main", sha)  # the push lands in the repository, then Gitea sends the webhook
        tasks.append(asyncio.create_task(_send(port, request, timeout)))
    for index, (status, latency) in enumerate(await asyncio.gather(*tasks)):
        result.statuses[status] = result.statuses.get(status, 0) + 1
        result.latencies.append(latency)
        result.timeline.append((round(index / rate, 4), round(latency, 5)))
    result.duration = time.monotonic() - started
    return result


def burst(port: int, plan: list[tuple[Path, str, bytes]], rate: float) -> Burst:
    # Gitea gives a delivery 5 s and never retries: a slower answer is a failed delivery.
    return asyncio.run(_burst(port, plan, rate, timeout=GITEA_TIMEOUT))


def db_count(db: Path, query: str, *args: Any) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as connection:
        return int(connection.execute(query, args).fetchone()[0] or 0)


def converged(daemon: DaemonProc, wanted: dict[str, str]) -> bool:
    services = {s["name"]: s for s in daemon.get_json("/api/services")}
    for name, sha in wanted.items():
        service = services.get(name) or {}
        last = service.get("last_attempt") or {}
        if service.get("running_sha") != sha or not service.get("healthy") or last.get("outcome") == "running":
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--repos", type=int, default=20)
    parser.add_argument("--py-spy", default="off", metavar="PATH|auto|off",
                        help="sample the daemon during the burst with py-spy, GIL holders only (optional)")
    parser.add_argument("--what-if", default=None, metavar="NAME[,NAME]",
                        help="run the daemon with proposed changes patched in by bench/_traced_serve.py: "
                             "switch-interval; or isolations: no-passes (passes dropped: ingestion alone), "
                             "no-audit (audit rows dropped), no-port-scan (no psutil scan for port holders); "
                             "inline-route and audit-batch are adopted since (the figures are then NOT deployer's "
                             "as committed)")
    parser.add_argument("--timeout", type=float, default=600, help="hard limit for the whole script, seconds")
    args = parser.parse_args()
    py_spy = find_py_spy(args.py_spy)
    total = int(args.rate * args.seconds)
    per_repo = -(-total // args.repos)
    title = "3. Webhook ingestion: burst and coalescing"
    if args.what_if:
        title += f" -- WHAT-IF {args.what_if}, not the committed code"
    report = Report("webhook_burst" + (f"-whatif-{args.what_if.replace(',', '+')}" if args.what_if else ""), title,
                    params={"rate": args.rate, "seconds": args.seconds, "repos": args.repos, "requests": total,
                            "what_if": args.what_if})
    with Cleanup(args.timeout) as cleanup:
        root = cleanup.tempdir("burst")
        log(f"making {args.repos + 1} repositories with {per_repo} commits each")
        repos = make_repos(root, args.repos + 1, max(per_repo, COALESCE_PUSHES))
        burst_repos, coalesce_repo = repos[:-1], repos[-1]
        window = free_window(14100, args.repos + 10)
        config = write_config(root / "deployer.toml", listen_port=free_port(), state_dir=root / "state",
                              port_first=window, port_count=args.repos + 10,
                              extra=f'[gitea]\nclone_base = "file://{root / "gitea"}"\nallowed_owners = ["{OWNER}"]\n')
        no_passes = root / "no-passes.flag"  # the no-passes isolation drops passes once this exists
        gil_probe = RESULTS / "profiles" / f"gil-probe-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
        daemon = start_daemon(cleanup, config, root / "state", what_if=args.what_if,
                              env={"DEPLOYER_WEBHOOK_SECRET": SECRET, "BENCH_NO_PASSES_FLAG": str(no_passes),
                                   "BENCH_GIL_PROBE": str(gil_probe)})
        db = root / "state" / "deployer.db"
        log("first deploy of every repository (setup, not measured)")
        for repo in repos:
            status, _ = daemon.post("/hooks/gitea", *signed_push(OWNER, repo.name, "0" * 40, repo.first, SECRET))
            assert status == 202, status
        wait_for(lambda: converged(daemon, {r.name: r.first for r in repos}), 300, "every first deploy", 0.5)
        no_passes.touch()

        plan: list[tuple[Path, str, bytes]] = []
        heads = {r.name: r.first for r in burst_repos}
        for index in range(total):
            repo = burst_repos[index % args.repos]
            sha = repo.commits[index // args.repos]
            body, headers = signed_push(OWNER, repo.name, heads[repo.name], sha, SECRET)
            heads[repo.name] = sha
            plan.append((repo.bare, sha, raw_request(daemon.port, body, headers)))

        baseline_port = free_port()
        receiver = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_minimal_receiver.py"),
                                     str(baseline_port), SECRET], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cleanup.add("stop the minimal receiver", terminate, receiver, 10)
        wait_for(lambda: http_get(baseline_port, "/healthz")[0] == 200, 30, "the minimal receiver")
        log(f"baseline burst: {total} requests at {args.rate:g}/s against the minimal receiver")
        # The same requests; the branch moves again, harmlessly (nothing follows the receiver).
        baseline = burst(baseline_port, [(bare, sha, request.replace(f"127.0.0.1:{daemon.port}".encode(),
                                                                      f"127.0.0.1:{baseline_port}".encode(), 1))
                                         for bare, sha, request in plan], args.rate)
        terminate(receiver, 10)
        for repo in burst_repos:
            set_ref(repo.bare, "main", repo.first)  # back where deployer last saw it
        time.sleep(1)

        attempts_before = db_count(db, "SELECT max(id) FROM attempts")
        deliveries_before = db_count(db, "SELECT max(id) FROM deliveries")
        log(f"deployer burst: {total} requests at {args.rate:g}/s across {args.repos} repositories")
        cpu0 = _cpu_now(daemon)
        with PySpy(py_spy, daemon.process.pid, "webhook_burst-daemon", gil=True) as spy:
            measured = burst(daemon.port, plan, args.rate)
        burst_end = time.monotonic()
        cpu1 = _cpu_now(daemon)
        cpu = {key: cpu1[key] - cpu0[key] for key in cpu0}
        cpu.update(machine_busy=cpu["machine_busy"] / max(cpu.pop("machine_total"), 1e-9),
                   daemon_children_s=cpu.pop("daemon_tree_s") - cpu["daemon_cpu_s"], seconds=measured.duration)
        final = {r.name: heads[r.name] for r in burst_repos}
        deploying = "no-passes" not in (args.what_if or "")  # that isolation deploys nothing: nothing to wait for
        try:
            if not deploying:
                raise TimeoutError("no passes run")
            wait_for(lambda: converged(daemon, final), 300, "every repository at its last pushed commit", 0.5)
            settle = time.monotonic() - burst_end
        except TimeoutError:
            settle = float("nan")
        services = {s["name"]: s for s in daemon.get_json("/api/services")}
        lost = sum(1 for name, sha in final.items() if services.get(name, {}).get("running_sha") != sha)
        deploys = db_count(db, "SELECT count(*) FROM attempts WHERE id > ?", attempts_before)
        accepted = db_count(db, "SELECT count(*) FROM deliveries WHERE id > ? AND result = 'accepted'",
                            deliveries_before)
        errors = sum(n for status, n in measured.statuses.items() if not status.startswith("2"))
        slow = sum(1 for latency in measured.latencies if latency > 1.0)
        acked = sum(n for status, n in measured.statuses.items() if status == "202")

        if not deploying:
            _report_ingestion_only(report, measured, baseline)
            report.notes.append(_cpu_note(cpu))
            report.samples["cpu"] = cpu
            report.finish()
            return 0
        log(f"coalescing: {COALESCE_PUSHES} pushes to {coalesce_repo.name} within 1 s")
        before = coalesce_repo.first
        coalesce_plan = []
        for sha in coalesce_repo.commits[:COALESCE_PUSHES]:
            body, headers = signed_push(OWNER, coalesce_repo.name, before, sha, SECRET)
            coalesce_plan.append((coalesce_repo.bare, sha, raw_request(daemon.port, body, headers)))
            before = sha
        attempts_before_c = db_count(db, "SELECT max(id) FROM attempts")
        coalesced = burst(daemon.port, coalesce_plan, COALESCE_PUSHES / 1.0)
        last = coalesce_repo.commits[COALESCE_PUSHES - 1]
        started_c = time.monotonic()
        wait_for(lambda: converged(daemon, {coalesce_repo.name: last}), 120, "the last coalesced commit", 0.2)
        coalesce_settle = time.monotonic() - started_c
        coalesce_deploys = db_count(db, "SELECT count(*) FROM attempts WHERE id > ? AND service = ?",
                                    attempts_before_c, coalesce_repo.name)
        coalesce_errors = sum(n for status, n in coalesced.statuses.items() if not status.startswith("2"))

        ms = [x * 1000 for x in measured.latencies]
        base_ms = [x * 1000 for x in baseline.latencies]
        p99 = quantile(ms, 0.99)
        report.add("ack latency p50", quantile(ms, 0.5), quantile(base_ms, 0.5), "ms")
        report.add("ack latency p99", p99, quantile(base_ms, 0.99), "ms", target=f"< {P99_TARGET * 1000:.0f} ms",
                   met=p99 < P99_TARGET * 1000)
        report.add("ack latency max", max(ms), max(base_ms), "ms")
        report.add("errors (non-2xx, > 5 s Gitea timeout, resets)", errors,
                   sum(n for s, n in baseline.statuses.items() if not s.startswith("2")), "", target="0",
                   met=errors == 0)
        report.add("acks slower than 1 s", slow, sum(1 for latency in baseline.latencies if latency > 1.0), "")
        report.add("pushes acknowledged 202 / recorded accepted", acked, accepted, "",
                   note="baseline column here: deliveries deployer recorded as accepted")
        report.add("lost pushes (repo not at its last pushed commit)", lost, None, "", target="0", met=lost == 0)
        report.add("deploys started by the burst", deploys, total, "",
                   note=f"baseline column: pushes sent (a deploy per push); all converged "
                        f"{settle:.1f} s after the burst")
        report.add("coalescing: deploys for 100 pushes in 1 s", coalesce_deploys, COALESCE_PUSHES, "",
                   target="<= 2, last commit deployed",
                   met=coalesce_deploys <= 2 and coalesce_errors == 0,
                   note=f"baseline: one deploy per push (not run). Last commit healthy {coalesce_settle:.1f} s "
                        f"after the last push; {coalesce_errors} errors")
        report.notes.append(_cpu_note(cpu))
        report.notes.append(f"sent {total} in {measured.duration:.1f} s ({measured.late_starts} left >5 ms late); "
                            f"baseline {baseline.duration:.1f} s ({baseline.late_starts} late); "
                            f"statuses deployer {measured.statuses}, baseline {baseline.statuses}")
        if py_spy:
            report.notes.append(profile_note("daemon during the burst, GIL holders", spy.summary()))
        report.samples = {"profile": spy.summary(), "deployer_ms": sorted(ms), "baseline_ms": sorted(base_ms),
                          "statuses": measured.statuses, "baseline_statuses": baseline.statuses,
                          "timeline": measured.timeline, "started_monotonic": measured.started, "cpu": cpu,
                          "settle_s": settle, "coalesce": {"deploys": coalesce_deploys,
                                                           "statuses": coalesced.statuses,
                                                           "settle_s": coalesce_settle}}
    report.finish()
    return 0


def _cpu_now(daemon: DaemonProc) -> dict[str, float]:
    """CPU seconds so far: the machine's, the daemon's own threads, its child processes (git, hooks), the
    services (the embedded supervisord's tree) and this bench process (the sender)."""
    import os

    busy, total = machine_cpu()
    own = os.times()
    pid_file = daemon.state_dir / "supervisor" / "supervisord.pid"
    supervisord = int(pid_file.read_text().strip()) if pid_file.exists() else None
    return {"machine_busy": busy, "machine_total": total, "daemon_cpu_s": cpu_seconds(daemon.process.pid),
            "daemon_tree_s": tree_cpu(daemon.process.pid),
            "services_s": tree_cpu(supervisord) if supervisord is not None else 0.0,
            "bench_s": own.user + own.system}


def _cpu_note(cpu: dict[str, float]) -> str:
    return (f"CPU during the {cpu['seconds']:.1f} s burst: the machine's CPUs were {cpu['machine_busy'] * 100:.0f}% "
            f"busy (all processes, /proc/stat); CPU seconds used by the daemon's own threads "
            f"{cpu['daemon_cpu_s']:.1f}, its child processes (git) {cpu['daemon_children_s']:.1f}, the services "
            f"(supervisord and its programs: booting the redeployed ones) {cpu['services_s']:.1f}, this bench's "
            f"sender {cpu['bench_s']:.1f}")


def _report_ingestion_only(report: Report, measured: Burst, baseline: Burst) -> None:
    """The ``no-passes`` isolation: acknowledgements only (nothing was deployed, nothing to converge)."""
    ms = [x * 1000 for x in measured.latencies]
    base_ms = [x * 1000 for x in baseline.latencies]
    p99 = quantile(ms, 0.99)
    report.add("ack latency p50", quantile(ms, 0.5), quantile(base_ms, 0.5), "ms")
    report.add("ack latency p99", p99, quantile(base_ms, 0.99), "ms", target=f"< {P99_TARGET * 1000:.0f} ms",
               met=p99 < P99_TARGET * 1000)
    report.add("ack latency max", max(ms), max(base_ms), "ms")
    errors = sum(n for status, n in measured.statuses.items() if not status.startswith("2"))
    report.add("errors (non-2xx, > 5 s Gitea timeout, resets)", errors, None, "", target="0", met=errors == 0)
    report.notes.append("no-passes: requested passes were dropped, so these are the acknowledgements without the "
                        "reconcile work a burst causes; lost pushes and coalescing are not measured")
    report.samples = {"deployer_ms": sorted(ms), "baseline_ms": sorted(base_ms), "statuses": measured.statuses,
                      "timeline": measured.timeline}


if __name__ == "__main__":
    sys.exit(main())
