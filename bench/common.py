"""Shared helpers for the benchmarks: timing and statistics, the result table, JSON results,
bounded waits, cleanup, and the daemon/supervisord/git plumbing every script needs.

Every script builds a ``Report``: rows of figure | deployer | baseline | ratio | target | met?,
printed as a table and written to ``bench/results/<name>-<timestamp>.json``. Everything a script
starts is registered with a ``Cleanup`` (an ExitStack that also runs on SIGTERM/SIGINT and on the
script's own deadline), so a run always stops by itself and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench scripts import deployer and tests.helpers from the checkout
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")


# ---------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (q in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio(deployer: float | None, baseline: float | None) -> float | None:
    if deployer is None or baseline is None or baseline == 0 or math.isnan(deployer) or math.isnan(baseline):
        return None
    return deployer / baseline


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """median, min, max and count of a sample (what the JSON keeps for every figure)."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": median(values), "min": min(values), "max": max(values)}


@contextlib.contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as took: ...`` then ``took[0]`` holds the seconds."""
    holder: list[float] = []
    started = time.monotonic()
    try:
        yield holder
    finally:
        holder.append(time.monotonic() - started)


# ---------------------------------------------------------------- the report


@dataclass
class Row:
    figure: str
    deployer: float | None
    baseline: float | None
    unit: str
    target: str = ""
    met: bool | None = None
    ratio: float | None = None
    note: str = ""


@dataclass
class Report:
    """One script's rows and raw samples; ``finish`` prints the table and writes the JSON."""

    name: str
    title: str
    params: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    samples: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    load_at_start: tuple[float, ...] = field(default_factory=os.getloadavg)

    def add(self, figure: str, deployer: float | None, baseline: float | None, unit: str, *,
            target: str = "", met: bool | None = None, ratio_value: float | None = None,
            note: str = "") -> Row:
        row = Row(figure, deployer, baseline, unit, target, met,
                  ratio_value if ratio_value is not None else ratio(deployer, baseline), note)
        self.rows.append(row)
        return row

    def table(self) -> str:
        header = ["figure", "deployer", "baseline", "ratio", "target", "met?"]
        lines = [[row.figure, _fmt(row.deployer, row.unit), _fmt(row.baseline, row.unit),
                  "" if row.ratio is None else f"{row.ratio:.2f}x", row.target,
                  {True: "yes", False: "NO", None: "-"}[row.met]] for row in self.rows]
        widths = [max(len(header[i]), *(len(line[i]) for line in lines)) if lines else len(header[i])
                  for i in range(len(header))]
        rule = "-+-".join("-" * width for width in widths)
        out = [f"== {self.title} ==", " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), rule]
        out += [" | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines]
        notes = [f"  [{i + 1}] {row.figure}: {row.note}" for i, row in enumerate(self.rows) if row.note]
        out += (["notes:", *notes] if notes else []) + [f"  * {note}" for note in self.notes]
        state = code_state()
        dirty = state.get("deployer_uncommitted") or []
        out.append(f"  * deployer at {state.get('commit', '?')}"
                   + (f" plus uncommitted changes to {', '.join(dirty)}" if dirty else "")
                   + f"; machine load (1-min average) at start {self.load_at_start[0]:.1f} on {os.cpu_count()} CPUs")
        return "\n".join(out)

    def finish(self) -> Path:
        print()
        print(self.table(), flush=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS / f"{self.name}-{stamp}.json"
        data = {
            "name": self.name, "title": self.title, "started_at": self.started_at,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(), "loadavg_at_start": self.load_at_start, "params": self.params,
            "rows": [asdict(row) for row in self.rows],
            "notes": self.notes, "samples": self.samples,
        }
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"results: {path.relative_to(ROOT)}", flush=True)
        return path


def _fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "ms":
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    if unit == "MB":
        return f"{value:.0f} MB"
    if unit in ("", "count", "calls"):
        return f"{value:g}" + ("" if unit == "" else f" {unit}")
    return f"{value:g} {unit}"


def machine() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan,) * 3
    return {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count(), **code_state(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
            "kernel": platform.release(), "loadavg_at_end": load}


def code_state() -> dict[str, Any]:
    """Which deployer was measured: the commit, and files of deployer/ changed but not committed."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "deployer"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head, "deployer_uncommitted": [line[3:] for line in dirty if line.strip()]}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- cleanup and deadlines


class Deadline(Exception):
    """The script ran past its own time limit; cleanup still runs."""


class Cleanup(contextlib.ExitStack):
    """An ExitStack that also unwinds on SIGTERM/SIGINT and when ``limit`` seconds have passed.

    Callbacks run in reverse order of registration, each isolated: a failing one is
    reported and the rest still run.
    """

    def __init__(self, limit: float) -> None:
        super().__init__()
        self.limit = limit
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Cleanup:
        super().__enter__()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        signal.setitimer(signal.ITIMER_REAL, self.limit)
        return self

    def __exit__(self, *exc: Any) -> bool:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum in (signal.SIGTERM, signal.SIGINT):  # a second ^C must not cut the cleanup short
            signal.signal(signum, signal.SIG_IGN)
        try:
            return bool(super().__exit__(*exc))
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGALRM:
            raise Deadline(f"time limit of {self.limit:.0f}s reached")
        raise KeyboardInterrupt(f"signal {signum}")

    def add(self, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        def guarded() -> None:
            try:
                func(*args, **kwargs)
            except Exception as exc:  # cleanup goes on whatever one step does
                log(f"cleanup: {what} failed: {type(exc).__name__}: {exc}")

        self.callback(guarded)

    def tempdir(self, prefix: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"deployer-bench-{prefix}-"))
        self.add(f"remove {path}", _rmtree, path)
        return path


def _rmtree(path: Path) -> None:
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False, timeout=120)


# ---------------------------------------------------------------- waiting and probing


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}" + (f" ({last})" if last else ""))
        time.sleep(interval)


def http_get(port: int, path: str, timeout: float = 1.0, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """A GET with the standard library (cheap enough to poll every few milliseconds)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def health_json(port: int, path: str = "/health", timeout: float = 0.5) -> dict[str, Any] | None:
    try:
        status, body = http_get(port, path, timeout=timeout)
    except (OSError, http.client.HTTPException):
        return None
    if status != 200:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def wait_health(port: int, predicate: Callable[[dict[str, Any]], bool], timeout: float,
                interval: float = 0.005, path: str = "/health", attempt_timeout: float = 0.5) -> float:
    """Poll ``GET path`` every ``interval`` until its JSON satisfies ``predicate``; the monotonic time it did.

    ``attempt_timeout`` bounds one request: a connection docker-proxy accepted for a container that is
    not up yet hangs until then, so container benchmarks use a short one.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = health_json(port, path, attempt_timeout)
        now = time.monotonic()
        if data is not None and predicate(data):
            return now
        time.sleep(interval)
    raise TimeoutError(f"port {port} did not answer {path} as expected within {timeout:g}s")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_window(first: int, size: int, limit: int = 20000) -> int:
    """The first port ``>= first`` that starts ``size`` free ports in a row (checked now)."""
    start = first
    while start + size <= first + limit:
        busy = next((port for port in range(start, start + size) if not port_is_free(port)), None)
        if busy is None:
            return start
        start = busy + 1
    raise RuntimeError(f"no {size} free ports in a row from {first}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- processes


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", math.nan), values.get("VmHWM", math.nan)


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def tree_cpu(pid: int) -> float:
    """CPU time of a process and all its descendants, live or already reaped (their time then counts in
    the parent's cutime/cstime), so the difference of two readings is what the tree used in between."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))

    def total(one: int) -> float:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        own = sum(int(value) for value in fields[11:15]) / _CLK_TCK  # utime stime cutime cstime
        return own + sum(total(child) for child in children.get(one, []))

    return total(pid)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, summed over CPUs (from /proc/stat)."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values) - idle) / _CLK_TCK, sum(values) / _CLK_TCK


def process_start_monotonic(pid: int) -> float:
    """When ``pid`` was started, on ``time.monotonic``'s clock (10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    started_since_boot = int(fields[19]) / _CLK_TCK
    offset = time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()
    return started_since_boot - offset


def run(argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done


def terminate(process: subprocess.Popen[Any], grace: float = 20) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


# ---------------------------------------------------------------- git


GIT_ENV = {"GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.com",
           "GIT_CONFIG_NOSYSTEM": "1"}


def git(cwd: Path, *args: str, timeout: float = 60) -> str:
    return run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, timeout=timeout).stdout.strip()


def fast_import_commits(bare: Path, ref: str, parent: str, path: str, contents: Sequence[str]) -> list[str]:
    """Commits on ``ref`` (each changes only ``path`` to the next content), made by one git fast-import."""
    stream: list[bytes] = []
    for index, content in enumerate(contents):
        data = content.encode()
        message = f"bench commit {index}".encode()
        stream += [f"commit {ref}\n".encode(), f"mark :{index + 1}\n".encode(),
                   f"committer Bench <bench@example.com> {1_700_000_000 + index} +0000\n".encode(),
                   f"data {len(message)}\n".encode(), message + b"\n"]
        stream.append(f"from {parent}\n".encode() if index == 0 else f"from :{index}\n".encode())
        stream += [f"M 100644 inline {path}\n".encode(), f"data {len(data)}\n".encode(), data + b"\n"]
    marks = bare / "bench-marks"
    subprocess.run(["git", "fast-import", "--quiet", f"--export-marks={marks}"], cwd=bare, input=b"".join(stream),
                   check=True, capture_output=True, timeout=120)
    by_mark = dict(line.split() for line in marks.read_text().splitlines())
    marks.unlink()
    return [by_mark[f":{index + 1}"] for index in range(len(contents))]


def set_ref(bare: Path, branch: str, sha: str) -> None:
    """Move a branch of a bare repository the way a push does, without a git process (atomic rename)."""
    ref = bare / "refs" / "heads" / branch
    temporary = ref.with_name(f".{branch}.bench-tmp")
    temporary.write_text(sha + "\n")
    os.replace(temporary, ref)


# ---------------------------------------------------------------- the daemon


@dataclass
class DaemonProc:
    """``deployer serve`` in a subprocess (optionally under the bench's span tracer)."""

    url: str
    port: int
    state_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    trace_path: Path | None = None

    @property
    def supervisor_conf(self) -> Path:
        return self.state_dir / "supervisor" / "supervisord.conf"

    def get_json(self, path: str, timeout: float = 10) -> Any:
        status, body = http_get(self.port, path, timeout=timeout)
        if status != 200:
            raise OSError(f"GET {path}: HTTP {status}")
        return json.loads(body)

    def service(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.get_json(f"/api/services/{name}"))
        except (OSError, ValueError, http.client.HTTPException):
            return None

    def post(self, path: str, body: bytes, headers: dict[str, str], timeout: float = 10) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def spans(self) -> list[dict[str, Any]]:
        if self.trace_path is None or not self.trace_path.exists():
            return []
        return [json.loads(line) for line in self.trace_path.read_text().splitlines() if line.strip()]


def write_config(path: Path, *, listen_port: int, state_dir: Path, port_first: int, port_count: int,
                 extra: str = "", interval: float = 3600, poll_interval: float = 3600,
                 docker: str = '"auto"') -> Path:
    path.write_text(f"""
[server]
listen = "127.0.0.1:{listen_port}"
[reconcile]
interval = {interval}
poll_interval = {poll_interval}
[ports]
range = "{port_first}-{port_first + port_count - 1}"
reuse_grace = 0
[docker]
enabled = {docker}
[paths]
state_dir = "{state_dir}"
{extra}
""")
    return path


def start_daemon(cleanup: Cleanup, config: Path, state_dir: Path, *, env: dict[str, str] | None = None,
                 trace: bool = False, what_if: str | None = None, timeout: float = 60) -> DaemonProc:
    """Start ``deployer serve``; registered for stop and cleanup.

    ``trace``: under the span tracer (bench/_traced_serve.py). ``what_if``: with the named proposed
    changes patched in by that launcher (comma-separated; see ``_traced_serve.what_if``).

    Stopping it stops its embedded supervisord too (and with it every program it ran).
    """
    import tomllib

    listen = str(tomllib.loads(config.read_text())["server"]["listen"])
    port = int(listen.rsplit(":", 1)[1])
    log_path = state_dir.parent / f"daemon-{port}.log"
    trace_path = state_dir.parent / f"trace-{port}.jsonl" if trace else None
    state_dir.mkdir(parents=True, exist_ok=True)
    launcher = trace or what_if or (env or {}).get("BENCH_TRACEMALLOC")
    argv = [sys.executable, str(ROOT / "bench" / "_traced_serve.py")] if launcher else \
        [sys.executable, "-m", "deployer"]
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith(("DEPLOYER_", "BENCH_"))}
    environ.update(env or {})
    if what_if:
        environ["BENCH_WHATIF"] = what_if
    if trace_path is not None:
        environ["BENCH_TRACE"] = str(trace_path)
    handle = log_path.open("ab")
    process = subprocess.Popen([*argv, "serve", "--config", str(config), "--log-level", "INFO"], cwd=config.parent,
                               env=environ, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    handle.close()
    daemon = DaemonProc(f"http://{listen}", port, state_dir, process, log_path, trace_path)
    cleanup.add("stop supervisord", stop_supervisord, state_dir)
    cleanup.add("stop the daemon", terminate, process, 30)

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited with {process.returncode}:\n{daemon.log_tail()}")
        return http_get(port, "/healthz", timeout=2)[0] == 200

    wait_for(up, timeout, "the daemon's /healthz", interval=0.1)
    return daemon


def stop_supervisord(state_dir: Path, timeout: float = 30) -> None:
    """SIGTERM the embedded supervisord under ``state_dir`` (it stops its programs) and wait for it."""
    pidfile = state_dir / "supervisor" / "supervisord.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    signal_and_wait(pid, timeout)


def signal_and_wait(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def signed_push(owner: str, repo: str, before: str, after: str, secret: str, *, branch: str = "main",
                clone_url: str | None = None) -> tuple[bytes, dict[str, str]]:
    """A Gitea push webhook (body, headers) exactly as Gitea sends it (tests/gitea_payloads.py)."""
    import uuid

    from tests import gitea_payloads as gp

    payload = gp.push_payload(owner, repo, f"refs/heads/{branch}", before, after,
                              clone_url or f"http://gitea.invalid:3000/{owner}/{repo}.git",
                              commits=[{"id": after, "message": "bench push"}])
    body = gp.encode(payload)
    return body, gp.headers(body, secret, delivery=str(uuid.uuid4()))


# ---------------------------------------------------------------- the embedded supervisord, read directly


def supervisor_rpc(socket_path: Path, timeout: float = 10) -> Any:
    """A plain supervisor XML-RPC proxy on a unix socket (the bench's own; deployer's is not used)."""
    import xmlrpc.client

    from supervisor.xmlrpc import SupervisorTransport

    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None,
                                                                                       f"unix://{socket_path}"))


# ---------------------------------------------------------------- span tracing (see _traced_serve.py)


def span_union(spans: Sequence[dict[str, Any]], start: float, end: float) -> float:
    """Seconds of [start, end] covered by at least one of ``spans`` (each with t0/t1)."""
    intervals = sorted((max(s["t0"], start), min(s["t1"], end)) for s in spans if s["t1"] > start and s["t0"] < end)
    total, current_start, current_end = 0.0, None, None
    for low, high in intervals:
        if current_end is None or low > current_end:
            if current_end is not None and current_start is not None:
                total += current_end - current_start
            current_start, current_end = low, high
        else:
            current_end = max(current_end, high)
    if current_end is not None and current_start is not None:
        total += current_end - current_start
    return total


def innermost_breakdown(spans: Sequence[dict[str, Any]], start: float, end: float,
                        category: Callable[[str], str], step: float = 0.0002) -> dict[str, float]:
    """Seconds of [start, end] per category of the innermost span open at each instant.

    Instants covered by no span count as ``idle/untraced``. Spans must come from one thread.
    """
    ordered = sorted(spans, key=lambda s: (s["t0"], -s["t1"]))
    totals: dict[str, float] = {}
    instant = start
    while instant < end:
        open_spans = [s for s in ordered if s["t0"] <= instant < s["t1"]]
        key = category(min(open_spans, key=lambda s: s["t1"] - s["t0"])["n"]) if open_spans else "untraced"
        totals[key] = totals.get(key, 0.0) + step
        instant += step
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


# ---------------------------------------------------------------- py-spy (optional sampling profiler)

# Where a sample's time goes: the first category whose marker appears in any frame of the stack.
PROFILE_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("httpx client setup (SSL context, per request)", ("create_ssl_context", "HTTPTransport.__init__")),
    ("SQLite commit (fsync)", ("do_commit",)),
    ("SQLAlchemy / SQLite (queries, ORM)", ("sqlalchemy/",)),
    ("psutil net_connections (port holders)", ("net_connections",)),
    ("git (GitPython, subprocesses)", ("git/cmd.py", "git/repo", "(deployer/source.py")),
    ("supervisord XML-RPC", ("xmlrpc/client.py", "runtimes/supervisor/rpc.py")),
    ("docker SDK (engine API)", ("docker/api/", "docker/utils", "requests/")),
    ("HTTP to services (httpx request)", ("httpx/", "httpcore/")),
    ("program files (read, hash, parse)", ("runtimes/supervisor/files.py", "runtimes/supervisor/program.py")),
    ("subprocess spawn/wait", ("subprocess.py",)),
    ("pydantic", ("pydantic",)),
    ("logging", ("logging/__init__.py",)),
    ("uvicorn / starlette (HTTP serving)", ("uvicorn/", "starlette/", "h11/", "anyio/")),
    ("prometheus metrics", ("prometheus_client/",)),
]


class PySpy:
    """``py-spy record`` of a process for a while, in raw (collapsed) form, summarised by category.

    Optional: the benchmarks run without it. ``path`` is the py-spy binary (None: not used).
    """

    def __init__(self, path: str | None, pid: int, label: str, *, rate: int = 200, gil: bool = False) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.out = RESULTS / "profiles" / f"{label}-{stamp}.raw"  # kept for reading; ignored by git
        self.path, self.pid, self.rate, self.gil = path, pid, rate, gil
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PySpy:
        if self.path:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            argv = [self.path, "record", "--pid", str(self.pid), "--format", "raw", "--threads", "--rate",
                    str(self.rate), "--nonblocking", "-o", str(self.out)]
            self._process = subprocess.Popen(argv + (["--gil"] if self.gil else []), stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # attached before the measured work starts
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGINT)  # py-spy writes its output on ^C
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)

    def summary(self, only: str | None = None) -> dict[str, Any]:
        """Samples by category; ``only``: just the stacks with a frame naming it (e.g. ``reconcile_source``)."""
        if not self.path or not self.out.exists():
            return {}
        categories: dict[str, int] = {}
        threads: dict[str, int] = {}
        total = 0
        for line in self.out.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            if only is not None and not any(only in frame for frame in frames[1:]):
                continue
            thread = frames[0].split(": ", 1)[-1].rstrip("0123456789-_ ") or "main"
            total += count
            threads[thread] = threads.get(thread, 0) + count
            name = next((label for label, markers in PROFILE_CATEGORIES
                         if any(marker in frame for frame in frames[1:] for marker in markers)), "other Python")
            categories[name] = categories.get(name, 0) + count
        share = {key: round(value / total, 3) for key, value in sorted(categories.items(), key=lambda i: -i[1])}
        return {"samples": total, "only": only, "rate": self.rate, "gil_only": self.gil, "share": share,
                "threads": dict(sorted(threads.items(), key=lambda i: -i[1])), "raw": str(self.out.relative_to(ROOT))}


def find_py_spy(choice: str | None) -> str | None:
    """``--py-spy``: a path, 'auto' (on PATH or next to the interpreter), or 'off'."""
    import shutil

    if choice in (None, "off"):
        return None
    if choice != "auto":
        return choice
    beside = VENV_BIN / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile_note(label: str, summary_data: dict[str, Any], top: int = 6) -> str:
    share = summary_data.get("share") or {}
    parts = ", ".join(f"{key} {value * 100:.0f}%" for key, value in list(share.items())[:top])
    return f"py-spy {label} ({summary_data.get('samples', 0)} samples): {parts}"


BUSYBOX = Path("/bin/busybox")


def busybox_image(cleanup: Cleanup, extra: dict[str, bytes] | None = None,
                  dockerfile_tail: str = "") -> tuple[Any, str]:
    """A ``FROM scratch`` image with Debian's static busybox (plus ``extra`` files), built, never pulled.

    Returns the low-level client and the tag; the image is removed by ``cleanup``.
    """
    import io
    import secrets
    import tarfile

    import docker

    if not BUSYBOX.is_file() or b"ld-linux" in BUSYBOX.read_bytes()[:8192]:
        raise RuntimeError("a static /bin/busybox is needed (Debian's busybox-static; scripts/docker-services.sh)")
    dockerfile = f"FROM scratch\nCOPY busybox /bin/busybox\n{dockerfile_tail}LABEL deployer-bench=base\n"
    files = {"Dockerfile": dockerfile.encode(), "busybox": BUSYBOX.read_bytes(), **(extra or {})}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    api = docker.APIClient(version="auto", timeout=120)
    tag = f"deployer-bench/busybox:{secrets.token_hex(4)}"
    for event in api.build(fileobj=buffer, custom_context=True, tag=tag, rm=True, decode=True, pull=False):
        if "error" in event:
            raise RuntimeError(f"building the busybox image failed: {event['error']}")
    cleanup.add("remove the bench image", lambda: api.remove_image(tag, force=True))
    return api, tag
