"""Benchmark 8: a swarm update rolled across two nodes vs one node, in the same run.

The swarm is the two-node one of ``scripts/two-node-swarm.sh`` (two private dockerds in network
namespaces; the system engine and its swarm are not touched): made here when it is not up, and
torn down again at the end if this script made it. deployer's Swarm runtime (``SwarmRuntime.apply``:
build, push to the swarm's registry, ``docker service update``, wait until swarm reports it done and
the new tasks stayed up) updates a busybox httpd service, alternating two versions:

- deployer: 2 replicas, one task per node (host-mode ports), so the update goes one node at a time
  (stop-first: no spare node), while a request loop asks both nodes (a request fails only when
  neither answers, as behind the gateway);
- baseline: 1 replica kept on node 1 (``placement: {constraints: [node.role==manager]}``), the same
  image, engine and settings: what the same update costs on one node.

Expected: about twice the one-node time (one node after the other), and no request lost.
Run: ``.venv/bin/python bench/swarm_nodes.py [--runs 4]`` (as root: namespaces, dockerds).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.common import ROOT, Cleanup, Report, free_port, log, median, wait_for
from deployer.model.manifest import PlacementSpec
from deployer.runtimes.docker import SwarmRuntime
from tests.docker_fixtures import TEMPLATES, ServiceFolder, _base_files, _tar_context

SCRIPT = ROOT / "scripts" / "two-node-swarm.sh"


def swarm_up(cleanup: Cleanup) -> dict[str, str]:
    """The two-node swarm's environment; brought down at the end only when this run brought it up."""
    made = subprocess.run([str(SCRIPT), "status"], capture_output=True, check=False).returncode != 0
    out = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, check=True).stdout
    if made:
        cleanup.add("tear the two-node swarm down", subprocess.run, [str(SCRIPT), "down"], capture_output=True)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def base_image(manager: str) -> str:
    import docker

    api = docker.APIClient(base_url=manager, version="auto", timeout=120)
    files = _base_files()
    tag = f"deployer-test/busybox:{hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()[:12]}"
    for event in api.build(fileobj=_tar_context(files), custom_context=True, tag=tag, rm=True, decode=True, pull=False):
        if "error" in event:
            raise RuntimeError(f"building the busybox image on node 1 failed: {event['error']}")
    return tag


class Requests(threading.Thread):
    """Each node in turn, falling over to the other: ``failed`` counts requests neither node answered."""

    def __init__(self, nodes: list[str], port: int) -> None:
        super().__init__(daemon=True)
        self.nodes, self.port = nodes, port
        self.answered = self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        turn = 0
        with httpx.Client(timeout=1.0) as client:
            while not self.stop.is_set():
                turn += 1
                order = self.nodes[turn % 2:] + self.nodes[:turn % 2]
                if any(self._ask(client, node) for node in order):
                    self.answered += 1
                else:
                    self.failed += 1
                time.sleep(0.02)

    def _ask(self, client: httpx.Client, node: str) -> bool:
        try:
            return client.get(f"http://{node}:{self.port}/health").status_code == 200
        except httpx.HTTPError:
            return False


def deploy(runtime: SwarmRuntime, folder: ServiceFolder, **fields: Any) -> None:
    folder.write("v0", base=runtime.images.base_image)
    runtime.apply(folder.deployment(1, **fields))


def updates(runtime: SwarmRuntime, folder: ServiceFolder, runs: int, **fields: Any) -> list[float]:
    """``runs`` timed updates of a deployed service (each a new version, so every task is replaced)."""
    took = []
    for run in range(1, runs + 1):
        folder.write(f"v{run}", base=runtime.images.base_image)
        deployment = folder.deployment(run + 1, **fields)
        runtime.build(deployment)  # the build and push are the same either way: timed apart from the roll
        started = time.monotonic()
        runtime.apply(deployment)
        took.append(time.monotonic() - started)
        log(f"{folder.name}: update {run} took {took[-1]:.2f}s")
    runtime.remove(folder.name)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="timed updates per layout")
    parser.add_argument("--timeout", type=float, default=600, help="hard limit for the whole script, seconds")
    args = parser.parse_args()
    report = Report("swarm_nodes", "8. Swarm: a 2-replica update across two nodes vs one node",
                    params={"runs": args.runs})
    with Cleanup(args.timeout) as cleanup:
        env = swarm_up(cleanup)
        nodes = env["DEPLOYER_SWARM2_NODES"].split(",")
        runtime = SwarmRuntime(env["DEPLOYER_SWARM2_MANAGER"], templates_dir=TEMPLATES,
                               base_image=base_image(env["DEPLOYER_SWARM2_MANAGER"]),
                               registry=env["DEPLOYER_SWARM2_REGISTRY"], monitor=1.0, start_seconds=0.5)
        root = cleanup.tempdir("swarm-nodes")
        two = ServiceFolder("bench-two-nodes", root / "two", free_port(), runtime="swarm")
        one = ServiceFolder("bench-one-node", root / "one", free_port(), runtime="swarm")
        cleanup.add("remove the bench services", lambda: [runtime.remove(f.name) for f in (two, one)])
        on_node_one = PlacementSpec(constraints=["node.role==manager"])
        deploy(runtime, one, placement=on_node_one)
        baseline = updates(runtime, one, args.runs, placement=on_node_one)
        loop = Requests(nodes, two.port)
        deploy(runtime, two, replicas=2)
        wait_for(lambda: all(httpx.get(f"http://{n}:{two.port}/health", timeout=1).status_code == 200
                             for n in nodes), 30, "both nodes answering")
        loop.start()
        rolled = updates(runtime, two, args.runs, replicas=2)
        loop.stop.set()
        loop.join(5)
        report.add("2-replica update, 2 nodes (apply: update -> every new task up)", median(rolled), median(baseline),
                   "s", note="baseline: the same update of a 1-replica service on node 1; build and push timed apart")
        report.add("  requests neither node answered during the 2-node updates", loop.failed, None, "",
                   target="0", met=loop.failed == 0, note=f"{loop.answered} answered")
        report.samples = {"two_nodes": rolled, "one_node": baseline, "answered": loop.answered,
                          "failed": loop.failed}
        report.notes.append("measured on a shared, loaded machine: read the ratio, not the seconds")
        report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
