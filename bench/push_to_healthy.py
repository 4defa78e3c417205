"""Benchmark 1: push to healthy, code-only change, Supervisor runtime.

deployer: a signed Gitea push webhook for a commit that changes only ``server.py`` of the
example service (manifests/examples/text-classify); the clock runs from the webhook's 202 to
the new revision answering ``GET /health`` (the bench polls it every 5 ms; the commit's build
marker is in the answer, so the old process answering does not count).

Baseline, same repository, same commit, same machine, alternating order run by run: the naive
way — ``git fetch && git checkout && supervisorctl restart && poll /health`` — on a clone of the
same repository under a supervisord of the bench's own, with the same program settings as
deployer's template (startsecs=1, stopasgroup, ...).

deployer's own overhead is split out with the span tracer (bench/_traced_serve.py): of the time
from the 202 to the spawn of the new process, what was not spent in git or in stopping the old
process. The service's boot (spawn to /health answering) is reported beside it.

Run: ``.venv/bin/python bench/push_to_healthy.py [--runs 7]``.
"""

from __future__ import annotations

import argparse
import os
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
    free_port,
    free_window,
    git,
    innermost_breakdown,
    log,
    median,
    process_start_monotonic,
    run,
    signal_and_wait,
    signed_push,
    span_union,
    start_daemon,
    summary,
    supervisor_rpc,
    wait_for,
    wait_health,
    write_config,
)
from tests.helpers import EXAMPLE, GitRepo

SECRET = "bench-webhook-secret"
OWNER, REPO, NAME = "bench", "text-classify", "text-classify"
HEALTH_LINE = 'self._send(200, {"status": "ok"})'
STARTED_LINE = "STARTED = time.time()"
OVERHEAD_TARGET = 0.300
RATIO_TARGET = 1.3


def server_source(build: int) -> str:
    """The example's server.py, with a build marker in its /health answer (a code-only change)."""
    text = (EXAMPLE / "server.py").read_text()
    if text.count(HEALTH_LINE) != 1 or text.count(STARTED_LINE) != 1:
        raise RuntimeError("manifests/examples/text-classify/server.py changed shape; update bench/push_to_healthy.py")
    text = text.replace(STARTED_LINE, f'{STARTED_LINE}\nBUILD = "{build}"')
    return text.replace(HEALTH_LINE, 'self._send(200, {"status": "ok", "build": BUILD})')


class Naive:
    """The naive way: a clone of the repository and a supervisord of our own running server.py from it."""

    def __init__(self, cleanup: Cleanup, root: Path, bare: Path, port: int) -> None:
        self.dir, self.port = root / "naive", port
        self.checkout = self.dir / "checkout"
        self.dir.mkdir(parents=True)
        git(self.dir, "clone", "--quiet", str(bare), str(self.checkout))
        self.conf = self.dir / "supervisord.conf"
        self.conf.write_text(f"""[unix_http_server]
file={self.dir}/supervisor.sock
[supervisord]
logfile={self.dir}/supervisord.log
pidfile={self.dir}/supervisord.pid
childlogdir={self.dir}
directory={self.dir}
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{self.dir}/supervisor.sock
; the same settings as deployer's templates/supervisor/program.conf.j2
[program:naive]
command={sys.executable} server.py --port {port}
directory={self.checkout}
environment=PORT="{port}",HOST="127.0.0.1",MODEL_NAME="lexicon-sentiment",MODEL_VERSION="1.0"
autostart=true
autorestart=true
startsecs=1
startretries=3
stopasgroup=true
killasgroup=true
stopsignal=TERM
stopwaitsecs=10
redirect_stderr=true
stdout_logfile={self.dir}/naive.log
""")
        run([str(VENV_BIN / "supervisord"), "-c", str(self.conf)], cwd=self.dir,
            env={"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"})
        pid = int(wait_for(lambda: (self.dir / "supervisord.pid").read_text().strip(), 15, "naive supervisord"))
        cleanup.add("stop the naive supervisord", signal_and_wait, pid, 30)

    def deploy(self, build: int) -> dict[str, float]:
        """git fetch && git checkout && supervisorctl restart && poll /health; phase durations in seconds."""
        started = time.monotonic()
        git(self.checkout, "fetch", "--quiet", "origin")
        git(self.checkout, "checkout", "--quiet", "--detach", "origin/main")
        fetched = time.monotonic()
        run([str(VENV_BIN / "supervisorctl"), "-c", str(self.conf), "restart", "naive"], timeout=60)
        restarted = time.monotonic()
        healthy = wait_health(self.port, lambda data: data.get("build") == str(build), timeout=60)
        return {"total": healthy - started, "git": fetched - started, "restart": restarted - fetched,
                "poll": healthy - restarted}

    def stop_calls(self, rounds: int) -> dict[str, list[float]]:
        """supervisord's two ways to stop one program, timed: supervisorctl's and deployer's."""
        rpc = supervisor_rpc(self.dir / "supervisor.sock").supervisor
        timings: dict[str, list[float]] = {"stopProcess": [], "stopProcessGroup": []}
        for _ in range(rounds):
            for method in timings:
                started = time.monotonic()
                getattr(rpc, method)("naive", True)
                timings[method].append(time.monotonic() - started)
                rpc.startProcess("naive", True)  # back to RUNNING (after startsecs), as a deployed service is
                wait_health(self.port, lambda data: True, timeout=30)
        return timings


def category(label: str) -> str:
    """How a traced span is attributed in the overhead breakdown."""
    kind, _, rest = label.partition(".")
    if kind == "rpc":
        return f"supervisord RPC {rest}"
    return {"git": "git", "store": "store (SQLite)", "status": "commit status", "render": "render+check program",
            "health": "health probe", "build": "env cache lookup", "loader": "manifest load",
            "docker": "docker engine calls", "swarm": "swarm engine calls",
            "dockerapi": "docker engine calls"}.get(kind, f"own code in {label}")


def deployer_run(daemon: DaemonProc, port: int, before: str, sha: str, build: int) -> dict[str, Any]:
    body, headers = signed_push(OWNER, REPO, before, sha, SECRET)
    sent = time.monotonic()
    status, answer = daemon.post("/hooks/gitea", body, headers)
    acked = time.monotonic()
    if status != 202:
        raise RuntimeError(f"webhook answered {status}: {answer!r}")
    healthy = wait_health(port, lambda data: data.get("build") == str(build), timeout=90)
    service = wait_for(lambda: _finished(daemon, sha), 90, f"the attempt for {sha[:7]} to finish", interval=0.05)
    done_seen = time.monotonic()
    rpc = supervisor_rpc(daemon.state_dir / "supervisor" / "supervisor.sock")
    pid = int(rpc.supervisor.getProcessInfo(NAME)["pid"])
    spawned_proc = process_start_monotonic(pid)
    attempt = service["attempts"][0]
    result: dict[str, Any] = {"sha": sha, "ack": acked - sent, "total": healthy - acked,
                              "done_seen": done_seen - acked, "outcome": attempt["outcome"],
                              "steps": {step["name"]: step["duration"] for step in attempt["steps"]},
                              "spawn_proc": spawned_proc - acked}
    # The pass span is written when the pass ends, a moment after the attempt is recorded.
    wait_for(lambda: any(s["n"] == "rec.reconcile_source" and s["t0"] >= sent - 0.01 for s in daemon.spans()),
             30, "the pass to end", interval=0.05)
    result.update(_split(daemon.spans(), sent, acked, healthy, spawned_proc))
    return result


def _finished(daemon: DaemonProc, sha: str) -> dict[str, Any] | None:
    service = daemon.service(NAME)
    last = (service or {}).get("last_attempt") or {}
    if service and service.get("running_sha") == sha and last.get("outcome") not in (None, "running"):
        return service
    return None


def _split(spans: list[dict[str, Any]], sent: float, acked: float, healthy: float,
           spawned_proc: float) -> dict[str, Any]:
    """Git, stop, own overhead and boot, from the pass's spans on its worker thread."""
    passes = [s for s in spans if s["n"] == "rec.reconcile_source" and s["t0"] >= sent - 0.01]
    if not passes:
        return {"trace": "no pass span found"}
    first = min(passes, key=lambda s: s["t0"])
    mine = [s for s in spans
            if s["th"] == first["th"] and s["t0"] >= first["t0"] - 1e-6 and s["t1"] <= first["t1"] + 1e-6]
    adds = [s for s in mine if s["n"] == "rpc.addProcessGroup"]
    # supervisord spawns an autostart program in the loop turn that answers addProcessGroup.
    spawned = adds[0]["t1"] if adds else spawned_proc
    window = (acked, spawned)
    git_time = span_union([s for s in mine if s["n"].startswith("git.")], *window)
    stop_time = span_union([s for s in mine if s["n"] in ("rpc.stopProcessGroup", "rpc.stopProcess")], *window)
    pre_spawn = spawned - acked
    breakdown = innermost_breakdown(mine, *window, category=category)
    queue = max(0.0, first["t0"] - acked)
    breakdown["queue wait (202 -> pass start)"] = queue
    breakdown["untraced"] = max(0.0, breakdown.get("untraced", 0.0) - queue)
    return {"spawn": pre_spawn, "git": git_time, "stop": stop_time,
            "boot": healthy - spawned, "pass_total": first["t1"] - first["t0"],
            "breakdown": {key: round(value, 4) for key, value in breakdown.items() if value >= 0.0005},
            "git_calls": len([s for s in mine if s["n"].startswith("git.")]),
            "store_calls": len([s for s in mine if s["n"].startswith("store.")]),
            "rpc_calls": len([s for s in mine if s["n"].startswith("rpc.")])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="measured pushes (each: deployer and the naive way)")
    parser.add_argument("--docker", choices=["auto", "off"], default="auto",
                        help="the daemon's [docker] enabled (auto: as a default install on a Docker host)")
    parser.add_argument("--timeout", type=float, default=420, help="hard limit for the whole script, seconds")
    parser.add_argument("--what-if", choices=["stop-process"], default=None,
                        help="run the daemon with a proposed change patched in by the bench launcher "
                             "(stop-process: SupervisorRuntime.stop uses stopProcess instead of stopProcessGroup); "
                             "the figures are then NOT deployer's as committed")
    args = parser.parse_args()
    title = "1. Push to healthy, code-only change (Supervisor)"
    if args.what_if:
        title += f" -- WHAT-IF {args.what_if}, not the committed code"
    report = Report("push_to_healthy" + (f"-whatif-{args.what_if}" if args.what_if else ""), title,
                    params={"runs": args.runs, "docker": args.docker, "what_if": args.what_if})
    with Cleanup(args.timeout) as cleanup:
        root = cleanup.tempdir("push")
        repo = GitRepo.create(root / "gitea" / OWNER / f"{REPO}.git", root / "work")
        files = repo.copy_tree(EXAMPLE)
        files["server.py"] = server_source(0)
        shas = [repo.commit(files, "example service")]
        window = free_window(14000, 12)
        config = write_config(root / "deployer.toml", listen_port=free_port(), state_dir=root / "state",
                              port_first=window, port_count=10, docker='"auto"' if args.docker == "auto" else "false",
                              extra=f'[gitea]\nclone_base = "file://{root / "gitea"}"\nallowed_owners = ["{OWNER}"]\n')
        daemon = start_daemon(cleanup, config, root / "state", env={"DEPLOYER_WEBHOOK_SECRET": SECRET}, trace=True,
                              what_if=args.what_if)
        log("first deploy of the example service (setup, not measured)")
        status, _ = daemon.post("/hooks/gitea", *signed_push(OWNER, REPO, "0" * 40, shas[0], SECRET))
        assert status == 202, status
        service = wait_for(lambda: _finished(daemon, shas[0]), 120, "the first deploy", interval=0.1)
        port = int(service["port"])
        naive = Naive(cleanup, root, repo.bare, window + 11)
        wait_health(naive.port, lambda data: data.get("build") == "0", timeout=30)
        deployer_runs: list[dict[str, Any]] = []
        naive_runs: list[dict[str, float]] = []
        for build in range(1, args.runs + 1):
            shas.append(repo.commit({"server.py": server_source(build)}, f"code only: build {build}"))
            time.sleep(0.5)  # let the previous run's leftovers (logs, snapshots) settle
            order = ("deployer", "naive") if build % 2 else ("naive", "deployer")
            for who in order:
                if who == "deployer":
                    deployer_runs.append(deployer_run(daemon, port, shas[-2], shas[-1], build))
                else:
                    naive_runs.append(naive.deploy(build))
            d, n = deployer_runs[-1], naive_runs[-1]
            log(f"run {build}: deployer {d['total']:.3f}s (202->spawn {d.get('spawn', float('nan')):.3f}s, "
                f"git {d.get('git', float('nan')):.3f}s, stop {d.get('stop', float('nan')):.3f}s, "
                f"boot {d.get('boot', float('nan')):.3f}s) | naive {n['total']:.3f}s")
        log("timing supervisord's stop calls on the naive supervisord")
        stops = naive.stop_calls(5)
        report.samples = {"deployer": deployer_runs, "naive": naive_runs, "stop_calls": stops}
        _report(report, deployer_runs, naive_runs, stops, args.what_if)
    report.finish()
    return 0


def _report(report: Report, deployer_runs: list[dict[str, Any]], naive_runs: list[dict[str, float]],
            stops: dict[str, list[float]], what_if: str | None) -> None:
    def col(runs: list[dict[str, Any]], key: str) -> list[float]:
        return [float(r[key]) for r in runs if isinstance(r.get(key), int | float)]

    # A process stop costs what supervisord's plain stopProcess takes; anything above it is deployer's.
    stop_floor = median(stops["stopProcess"])
    for r in deployer_runs:
        if "spawn" in r:
            r["overhead"] = r["spawn"] - r["git"] - min(r["stop"], stop_floor)
            r["stop_excess"] = max(0.0, r["stop"] - stop_floor)

    total_d, total_n = median(col(deployer_runs, "total")), median(col(naive_runs, "total"))
    ratio = total_d / total_n
    report.add("push -> new revision answers /health", total_d, total_n, "s", target=f"<= {RATIO_TARGET}x naive",
               met=ratio <= RATIO_TARGET,
               note="deployer: from the webhook's 202; naive: from the start of git fetch. Medians of "
                    f"{len(deployer_runs)} runs each, interleaved")
    overhead = median(col(deployer_runs, "overhead"))
    report.add("deployer own overhead (202 -> spawn, minus git, minus a process stop)", overhead, None, "s",
               target=f"< {OVERHEAD_TARGET * 1000:.0f} ms", met=overhead < OVERHEAD_TARGET,
               note="a process stop counted at supervisord's stopProcess cost measured in this run; "
                    "the rest of deployer's stop call counts as deployer's")
    report.add("  git (fetch + checkout) before spawn", median(col(deployer_runs, "git")),
               median(col(naive_runs, "git")), "s", note="deployer: every git call of the pass before the spawn")
    report.add("  stop old process (deployer's stop call)", median(col(deployer_runs, "stop")),
               stop_floor, "s", note="baseline: supervisord stopProcess(wait) on the same program, this run")
    report.add("  supervisord stopProcessGroup(wait) vs stopProcess(wait)", median(stops["stopProcessGroup"]),
               stop_floor, "s", note="both timed directly on the naive supervisord, 5 each")
    report.add("  202 -> spawn of the new process", median(col(deployer_runs, "spawn")), None, "s")
    report.add("  service boot (spawn -> /health answers)", median(col(deployer_runs, "boot")), None, "s")
    report.add("  naive: supervisorctl restart (waits startsecs=1)", None, median(col(naive_runs, "restart")), "s")
    report.add("push -> attempt recorded succeeded (health gate + demo)", median(col(deployer_runs, "done_seen")),
               None, "s", note="deployer's own idea of done: RUNNING after startsecs, health gate, demo, records")
    report.add("webhook acknowledgement", median(col(deployer_runs, "ack")), None, "s")
    keys: set[str] = set()
    for r in deployer_runs:
        keys |= set(r.get("breakdown", {}))
    breakdown = {key: median([r.get("breakdown", {}).get(key, 0.0) for r in deployer_runs]) for key in keys}
    top = sorted(breakdown.items(), key=lambda item: -item[1])[:8]
    report.notes.append("202 -> spawn, median seconds by innermost traced call: "
                        + ", ".join(f"{key} {value * 1000:.0f} ms" for key, value in top))
    steps: dict[str, list[float]] = {}
    for r in deployer_runs:
        for name, seconds in r.get("steps", {}).items():
            steps.setdefault(name, []).append(seconds)
    report.notes.append("attempt steps (median s): " + ", ".join(f"{k} {median(v):.3f}" for k, v in steps.items()))
    report.notes.append("calls per pass (median): git {:.0f}, store {:.0f}, supervisord RPC {:.0f}".format(
        median(col(deployer_runs, "git_calls")), median(col(deployer_runs, "store_calls")),
        median(col(deployer_runs, "rpc_calls"))))
    report.samples["summary"] = {"deployer_total": summary(col(deployer_runs, "total")),
                                 "naive_total": summary(col(naive_runs, "total")), "breakdown_median": breakdown}


if __name__ == "__main__":
    sys.exit(main())
