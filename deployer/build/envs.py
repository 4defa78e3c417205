"""Per-service Python environments, cached by what they install and which interpreter runs them.

The cache key covers the requirements (file text, pyproject's dependency list, the lock)
and the interpreter, never the service's code: a code-only push reuses the
environment. Each one is built in a fresh directory and published by atomically
renaming a symlink onto its key, so no caller ever sees a half-built environment.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from deployer.build.interpreters import Interpreter, Interpreters
from deployer.build.project import Kind, Requirements, resolve_requirements
from deployer.errors import BuildError, ConfigError

INSTALLERS = ("auto", "uv", "pip")
TAIL_CHARS = 4000
# Directory names use a prefix of the key: console-script shebangs hold the full path (kernel limit).
_DIR_KEY_CHARS = 24
# Variables of the daemon's own environment that must not reach an installer (secrets, another venv).
_SCRUBBED_PREFIXES = ("DEPLOYER_",)
_SCRUBBED = frozenset({"VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "CONDA_PREFIX"})


@dataclass(frozen=True)
class BuildResult:
    env_dir: Path
    key: str
    reused: bool
    duration: float
    output_tail: str = ""
    summary: str = ""  # which file, which lock, which interpreter: for the build step's record


_Step = tuple[str, list[str], Path, dict[str, str]]  # what, argv, where, extra environment


def python_for(env_dir: Path) -> Path:
    """The interpreter of an environment built by ``EnvBuilder``."""
    return env_dir / "bin" / "python"


class EnvBuilder:
    """Builds and caches one virtual environment per distinct (requirements, interpreter).

    ``installer`` is ``uv`` (the one next to ``sys.executable``, else on PATH), ``pip``
    (``python -m venv`` + pip) or ``auto`` (uv when present). ``python`` is the
    interpreter for the environments (default: the daemon's own). ``timeout`` bounds
    one whole build in seconds, waiting for a concurrent build of the same key included.
    """

    def __init__(self, root: Path, *, installer: str = "auto", python: str = "", timeout: float = 900) -> None:
        if installer not in INSTALLERS:
            raise ConfigError(f"build installer must be one of {', '.join(INSTALLERS)} (got {installer!r})")
        self.root = root
        self.timeout = timeout
        self._uv = _find_uv() if installer in ("auto", "uv") else None
        if installer == "uv" and self._uv is None:
            raise ConfigError("build installer 'uv' is configured but no uv executable was found")
        # A uv.lock is read by uv whichever installer is configured: pip cannot read it.
        self._lock_reader = self._uv or _find_uv()
        self._interpreters = Interpreters(python or sys.executable, self._lock_reader)

    @property
    def installer(self) -> str:
        return "uv" if self._uv else "pip"

    def ensure(self, service_dir: Path, requirements: str | None) -> BuildResult:
        """The environment for ``service_dir``'s requirements (see ``resolve_requirements``), built or reused."""
        started = time.monotonic()
        spec = resolve_requirements(service_dir, requirements)
        interpreter = self._interpreters.choose(spec.python, service_dir)
        key = _key(spec, interpreter)
        summary = f"{spec.describe()}; Python {interpreter.release} ({interpreter.path})"
        if spec.python is not None:
            summary += f" for {spec.python.spec} in {spec.python.origin}"
        link = self.root / key[:_DIR_KEY_CHARS]
        if link.is_dir():
            return BuildResult(link, key, True, time.monotonic() - started, summary=summary)
        deadline = started + self.timeout
        with self._key_lock(key, deadline):
            if link.is_dir():  # built by whoever held the lock before us
                return BuildResult(link, key, True, time.monotonic() - started, summary=summary)
            tail = self._build(service_dir, spec, interpreter, link, deadline)
        return BuildResult(link, key, False, time.monotonic() - started, tail, summary)

    def key_for(self, spec: Requirements, service_dir: Path = Path(".")) -> str:
        """The cache key of ``spec``'s environment (with the interpreter it would be made from)."""
        return _key(spec, self._interpreters.choose(spec.python, service_dir))

    def interpreter(self) -> tuple[str, str]:
        """(real path, ``sys.version``) of the configured interpreter; asked once."""
        default = self._interpreters.default()
        return default.path, default.version

    def _build(self, service_dir: Path, spec: Requirements, interpreter: Interpreter, link: Path,
               deadline: float) -> str:
        staging = self.root / ".build"
        staging.mkdir(parents=True, exist_ok=True)
        _remove_stale(staging, link)
        env_dir = staging / f"{link.name}-{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryFile() as log:
            try:
                _run("creating the environment", self._create(env_dir, interpreter), service_dir, deadline, log)
                for step, argv, cwd, extra in self._installs(service_dir, env_dir, spec):
                    _run(step, argv, cwd, deadline, log, extra)
            except BuildError:
                shutil.rmtree(env_dir, ignore_errors=True)
                raise
            _publish(env_dir, link)
            return _tail(log)

    def _create(self, env_dir: Path, interpreter: Interpreter) -> list[str]:
        if self._uv:
            return [self._uv, "venv", "--quiet", "--no-python-downloads", "--python", interpreter.path, str(env_dir)]
        return [interpreter.path, "-m", "venv", str(env_dir)]

    def _installs(self, service_dir: Path, env_dir: Path, spec: Requirements) -> list[_Step]:
        """The install steps, after the environment exists (a lock's constraints are written into it)."""
        if spec.kind == Kind.UV_LOCK:
            return [self._uv_sync(service_dir, env_dir, spec)]
        args = list(spec.args)
        if spec.constraints:
            args += ["-c", str(_write_constraints(env_dir, spec.constraints, hashes=bool(self._uv)))]
        if self._uv and spec.hashed and spec.kind == Kind.REQUIREMENTS:
            args.append("--require-hashes")  # what pip does by itself when a file holds hashes
        if not args:
            return []
        python = str(python_for(env_dir))
        if self._uv:
            install = [self._uv, "pip", "install", "--python", python, *args]
        else:
            # "python -m pip" rather than bin/pip: no shebang, so no shebang length limit.
            install = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *args]
        return [(f"installing {spec.origin}" + (f" locked by {spec.lock}" if spec.lock else ""), install,
                 service_dir, {})]

    def _uv_sync(self, service_dir: Path, env_dir: Path, spec: Requirements) -> _Step:
        """``uv sync --frozen`` into our environment: the lock's exact versions, sources and hashes."""
        if self._lock_reader is None:
            raise BuildError(f"{service_dir / spec.lock}: installing from a uv lock needs uv, which is not "
                             "installed here; install uv (a dependency of deployer) or remove the lock")
        argv = [self._lock_reader, "sync", "--frozen", "--no-install-project", "--no-dev", "--no-python-downloads",
                "--python", str(python_for(env_dir))]
        project = service_dir / Path(spec.origin).parent
        return f"installing {spec.lock}", argv, project, {"UV_PROJECT_ENVIRONMENT": str(env_dir)}

    @contextmanager
    def _key_lock(self, key: str, deadline: float) -> Iterator[None]:
        """One build per key across threads and processes (flock conflicts between any two opens)."""
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{key[:_DIR_KEY_CHARS]}.lock", "w") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise BuildError("another build of the same environment is still running") from None
                    time.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _key(spec: Requirements, interpreter: Interpreter) -> str:
    material = json.dumps([spec.kind, spec.content, interpreter.path, interpreter.version], separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()


def _find_uv() -> str | None:
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("uv")


def _installer_environment() -> dict[str, str]:
    # Requirements come from git and may run build code: they get no daemon secrets and no foreign venv.
    return {
        key: value
        for key, value in os.environ.items()
        if key not in _SCRUBBED and not key.startswith(_SCRUBBED_PREFIXES)
    }


def _write_constraints(env_dir: Path, pins: tuple[str, ...], *, hashes: bool) -> Path:
    """A lock's pins as a constraints file kept in the environment (a record of what was locked).

    pip cannot check hashes given in constraints while it resolves ranges, so for pip they are
    left out and only the versions bind; uv checks them.
    """
    lines = pins if hashes else tuple(pin.split(" --hash=")[0] for pin in pins)
    path = env_dir / "deployer-constraints.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run(step: str, argv: list[str], cwd: Path, deadline: float, log: IO[bytes],
         extra: dict[str, str] | None = None) -> None:
    """Run one installer step in ``cwd`` (relative paths in a requirements file resolve there)."""
    log.write(f"$ {' '.join(argv)}\n".encode())
    log.flush()
    remaining = deadline - time.monotonic()
    try:
        process = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**_installer_environment(), **(extra or {})}, start_new_session=True,
        )
    except OSError as exc:
        raise BuildError(f"{cwd}: {step}: cannot run {argv[0]}: {exc}", output=_tail(log)) from exc
    try:
        code = process.wait(timeout=max(remaining, 0.001))
    except subprocess.TimeoutExpired:
        # The whole session: pip and uv start build subprocesses of their own.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise BuildError(f"{cwd}: {step}: did not finish within the build timeout", output=_tail(log)) from None
    if code != 0:
        raise BuildError(f"{cwd}: {step} failed (exit code {code}); see the output", output=_tail(log))


def _tail(log: IO[bytes]) -> str:
    log.flush()
    size = log.seek(0, os.SEEK_END)
    log.seek(max(size - TAIL_CHARS, 0))
    return log.read().decode("utf-8", errors="replace")


def _publish(env_dir: Path, link: Path) -> None:
    """Point ``link`` at ``env_dir`` atomically: a symlink renamed over the key's name."""
    temporary = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.symlink_to(env_dir.relative_to(link.parent))
    os.replace(temporary, link)


def _remove_stale(staging: Path, link: Path) -> None:
    """Builds of this key left over by a crash (not the one ``link`` points at)."""
    current = link.resolve() if link.is_symlink() else None
    for leftover in staging.glob(f"{link.name}-*"):
        if leftover.resolve() != current:
            shutil.rmtree(leftover, ignore_errors=True)
