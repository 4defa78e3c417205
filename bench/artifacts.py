"""Benchmark: model weights by digest (``artifacts:``), a 200 MB file from a loopback HTTP server.

1. First deploy: the rollout's ``artifacts`` step (fetch, verify sha256 while streaming, hard-link
   into the checkout) against a plain download of the same file by the same client library
   (httpx streaming to a file, nothing verified) — target at most 1.2x. The whole attempt's time is
   reported beside it, with the same service's first deploy without weights as its baseline.
2. Code-only redeploy: a service with the 200 MB artifact and its twin without, changed in turn
   (alternating), each attempt's duration from the store — target: equal within noise, and the
   artifact step fetching 0 bytes every time.

Run: ``.venv/bin/python bench/artifacts.py [--size-mb 200] [--runs 3] [--timeout 1200]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.common import (
    Cleanup,
    DaemonProc,
    Report,
    free_port,
    free_window,
    log,
    median,
    start_daemon,
    wait_for,
    write_config,
)
from tests.artifact_servers import FileServer
from tests.helpers import GitRepo

RATIO_TARGET = 1.2
SERVER = '''\
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SIZE = os.path.getsize("models/w.bin") if os.path.exists("models/w.bin") else 0  # {note}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"weights": SIZE, "note": "{note}"}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


def weights(path: Path, size: int) -> str:
    """``size`` random bytes at ``path``; returns their sha256."""
    hasher = hashlib.sha256()
    with path.open("wb") as handle:
        for _ in range(size // (1 << 20)):
            block = os.urandom(1 << 20)
            handle.write(block)
            hasher.update(block)
    return hasher.hexdigest()


def plain_download(url: str, target: Path, *, verify: str = "") -> float:
    """Seconds to stream ``url`` to a file (and, with ``verify``, to sha256 the file after, as sha256sum would)."""
    started = time.monotonic()
    with httpx.Client(trust_env=False) as client, client.stream("GET", url) as response, target.open("wb") as out:
        for chunk in response.iter_bytes():
            out.write(chunk)
    if verify:
        hasher = hashlib.sha256()
        with target.open("rb") as handle:
            while block := handle.read(1 << 20):
                hasher.update(block)
        if hasher.hexdigest() != verify:
            raise RuntimeError("the file server sent other bytes")
    took = time.monotonic() - started
    target.unlink()
    return took


def manifest(url: str, digest: str, *, with_weights: bool) -> str:
    entry = ("  - name: without\n    path: without\n    command: python serve.py\n    health: {path: /health}\n")
    if with_weights:
        entry += (f"  - name: with\n    path: with\n    command: python serve.py\n    health: {{path: /health}}\n"
                  f"    artifacts:\n      - {{url: '{url}', sha256: {digest}, path: models/w.bin}}\n")
    return "services:\n" + entry


def deployed(daemon: DaemonProc, name: str, sha: str, timeout: float = 600) -> dict[str, Any]:
    """Ask for a pass, then wait for ``name``'s finished attempt at ``sha``."""
    token = (daemon.state_dir / "api-token").read_text().strip()
    httpx.post(f"{daemon.url}/api/reconcile", json={}, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def finished() -> dict[str, Any] | None:
        detail = daemon.service(name)
        if detail is None:
            return None
        shas = {revision["id"]: revision["sha"] for revision in detail["revisions"]}
        for attempt in detail["attempts"]:
            if shas.get(attempt["revision"]) == sha and attempt["outcome"] != "running":
                if attempt["outcome"] != "succeeded":
                    raise RuntimeError(f"{name}: {attempt['outcome']}: {attempt['message']}")
                return dict(attempt)
        return None

    # Polled slowly: each poll is work for the daemon, which must not slow the transfer it measures.
    return wait_for(finished, timeout, f"{name}'s attempt at {sha[:7]}", interval=0.5)


def seconds(attempt: dict[str, Any]) -> float:
    return (datetime.fromisoformat(attempt["finished_at"]) - datetime.fromisoformat(attempt["started_at"])
            ).total_seconds()


def step(attempt: dict[str, Any], name: str) -> dict[str, Any]:
    return next(found for found in attempt["steps"] if found["name"] == name)


def first_deploys(report: Report, daemon: DaemonProc, repo: GitRepo, files: FileServer, args: argparse.Namespace,
                  without_first: dict[str, Any]) -> None:
    """New weights ``--runs`` times (the first is the service's first deploy), each beside plain downloads of
    the same file, alternating so that both see the same load."""
    plain, checked, took, attempts = [], [], [], []
    for run in range(args.runs):
        path = files.root / f"w{run}.bin"
        digest = weights(path, args.size_mb << 20)
        url = f"{files.url}/{path.name}"
        plain.append(plain_download(url, files.root.parent / "plain.bin"))
        checked.append(plain_download(url, files.root.parent / "plain.bin", verify=digest))
        sha = repo.commit({"service.yaml": manifest(url, digest, with_weights=True),
                           "with/serve.py": SERVER.format(note="0")}, f"with: {args.size_mb} MB of weights, {run}")
        attempts.append(deployed(daemon, "with", sha))
        fetched = step(attempts[-1], "artifacts")
        took.append(fetched["duration"])
        log(f"weights {run}: plain {plain[-1]:.2f}s, then sha256 {checked[-1]:.2f}s; deploy "
            f"{seconds(attempts[-1]):.2f}s, {fetched['output']} in {took[-1]:.2f}s")
        if run:
            (files.root / f"w{run - 1}.bin").unlink()
    report.add("artifacts step vs plain download", median(took), median(plain), "s",
               target=f"<= {RATIO_TARGET}x", met=median(took) <= RATIO_TARGET * median(plain),
               note=f"median of {args.runs}, new weights each time (the first: the service's first deploy); "
                    "fetch + sha256 while streaming + hard link")
    report.add("artifacts step vs download then sha256 of the file", median(took), median(checked), "s",
               note="the same verification done the plain way: after the download instead of during it")
    report.add("first deploy with the weights vs the same without", seconds(attempts[0]), seconds(without_first),
               "s", note="whole attempt: checkout, artifacts, build, start, health")
    report.samples.update(plain=plain, checked=checked, artifact_steps=took, first=attempts[0],
                          without_first=without_first)


def code_only(report: Report, daemon: DaemonProc, repo: GitRepo, runs: int) -> None:
    """Code-only redeploys of the service with the weights and of its twin without, alternating."""
    redeploys: dict[str, list[float]] = {"with": [], "without": []}
    outputs = []
    for run in range(1, runs + 1):
        for name in ("with", "without"):
            sha = repo.commit({f"{name}/serve.py": SERVER.format(note=str(run))}, f"{name}: code only {run}")
            attempt = deployed(daemon, name, sha)
            redeploys[name].append(seconds(attempt))
            if name == "with":
                outputs.append(step(attempt, "artifacts")["output"])
    log(f"code-only redeploys: {redeploys}; artifact steps: {outputs}")
    cached = all(output.endswith("0 B fetched (cached)") for output in outputs)
    with_median, without_median = median(redeploys["with"]), median(redeploys["without"])
    report.add("code-only redeploy, with the weights vs without", with_median, without_median, "s",
               target="equal within noise, 0 B fetched",
               met=cached and abs(with_median - without_median) <= max(0.25, 0.15 * without_median),
               note=f"{runs} each, alternating; artifact steps: {sorted(set(outputs))}")
    report.samples.update(redeploys=redeploys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1200, help="seconds before the script stops itself")
    args = parser.parse_args()
    report = Report("artifacts", f"Artifacts by digest: a {args.size_mb} MB weight file over loopback HTTP",
                    params=vars(args))
    with Cleanup(limit=args.timeout) as cleanup:
        root = cleanup.tempdir("artifacts")
        (root / "served").mkdir()
        files = FileServer(root / "served")
        files.__enter__()
        cleanup.add("stop the file server", files.__exit__, None, None, None)
        repo = GitRepo.create(root / "repo.git", root / "work")
        sha = repo.commit({"service.yaml": manifest("", "", with_weights=False),
                           "without/serve.py": SERVER.format(note="0")}, "without")
        config = write_config(root / "deployer.toml", listen_port=free_port(), state_dir=root / "state",
                              port_first=free_window(21000, 10), port_count=10, docker="false",
                              extra=f'[[sources]]\nurl = "{root / "repo.git"}"\nname = "models"\n')
        daemon = start_daemon(cleanup, config, root / "state")
        without_first = deployed(daemon, "without", sha)
        first_deploys(report, daemon, repo, files, args, without_first)
        code_only(report, daemon, repo, args.runs)
        report.notes.append("the same 2-core machine serves the file, runs the daemon and its services; other "
                            "work on it distorts every figure")
    report.finish()


if __name__ == "__main__":
    main()
