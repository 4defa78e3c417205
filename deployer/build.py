"""Per-service Python environments, cached by what they install and which interpreter runs them.

The cache key covers the requirements (file text, or pyproject's dependency list)
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
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from deployer.errors import BuildError, ConfigError
from deployer.safety import is_contained

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


@dataclass(frozen=True)
class Requirements:
    """What an environment installs: ``kind`` and ``content`` go into the key, ``args`` to the installer."""

    kind: str
    content: str
    args: tuple[str, ...] = ()
    origin: str = ""


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
        self._python = python or sys.executable
        self._interpreter: tuple[str, str] | None = None
        self._interpreter_lock = threading.Lock()

    @property
    def installer(self) -> str:
        return "uv" if self._uv else "pip"

    def ensure(self, service_dir: Path, requirements: str | None) -> BuildResult:
        """The environment for ``service_dir``'s requirements, built now or reused.

        ``requirements`` names a requirements file or ``pyproject.toml`` (relative to
        ``service_dir``); None picks pyproject's dependencies, else ``requirements.txt``,
        else an empty environment. From pyproject only ``[project].dependencies`` are
        installed, never the project itself: installing the project would tie the
        environment to the code, so every code-only push would reinstall it. The service
        still imports its own modules because it runs in its folder.
        """
        started = time.monotonic()
        spec = resolve_requirements(service_dir, requirements)
        key = self.key_for(spec)
        link = self.root / key[:_DIR_KEY_CHARS]
        if link.is_dir():
            return BuildResult(link, key, True, time.monotonic() - started)
        deadline = started + self.timeout
        with self._key_lock(key, deadline):
            if link.is_dir():  # built by whoever held the lock before us
                return BuildResult(link, key, True, time.monotonic() - started)
            tail = self._build(service_dir, spec, link, deadline)
        return BuildResult(link, key, False, time.monotonic() - started, tail)

    def key_for(self, spec: Requirements) -> str:
        interpreter, version = self.interpreter()
        material = json.dumps([spec.kind, spec.content, interpreter, version], separators=(",", ":"))
        return hashlib.sha256(material.encode()).hexdigest()

    def interpreter(self) -> tuple[str, str]:
        """(real path, ``sys.version``) of the interpreter environments are made from; asked once."""
        with self._interpreter_lock:
            if self._interpreter is None:
                self._interpreter = _probe_interpreter(self._python)
            return self._interpreter

    def _build(self, service_dir: Path, spec: Requirements, link: Path, deadline: float) -> str:
        staging = self.root / ".build"
        staging.mkdir(parents=True, exist_ok=True)
        _remove_stale(staging, link)
        env_dir = staging / f"{link.name}-{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryFile() as log:
            try:
                for step, argv in self._commands(env_dir, spec):
                    _run(step, argv, service_dir, deadline, log)
            except BuildError:
                shutil.rmtree(env_dir, ignore_errors=True)
                raise
            _publish(env_dir, link)
            return _tail(log)

    def _commands(self, env_dir: Path, spec: Requirements) -> list[tuple[str, list[str]]]:
        interpreter = self.interpreter()[0]
        python = str(python_for(env_dir))
        if self._uv:
            create = [self._uv, "venv", "--quiet", "--no-python-downloads", "--python", interpreter, str(env_dir)]
            install = [self._uv, "pip", "install", "--python", python, *spec.args]
        else:
            create = [interpreter, "-m", "venv", str(env_dir)]
            # "python -m pip" rather than bin/pip: no shebang, so no shebang length limit.
            install = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *spec.args]
        steps = [("creating the environment", create)]
        if spec.args:
            steps.append((f"installing {spec.origin}", install))
        return steps

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


def resolve_requirements(service_dir: Path, requirements: str | None) -> Requirements:
    """Decide what an environment for ``service_dir`` installs (see ``EnvBuilder.ensure``)."""
    if requirements is not None:
        path = _inside(service_dir, requirements)
        if path.name == "pyproject.toml":
            return _from_pyproject(path, requirements)
        return _from_file(path, requirements)
    pyproject = service_dir / "pyproject.toml"
    if pyproject.is_file():
        spec = _from_pyproject(_inside(service_dir, "pyproject.toml"), "pyproject.toml")
        if spec.args:
            return spec
    if (service_dir / "requirements.txt").is_file():
        return _from_file(_inside(service_dir, "requirements.txt"), "requirements.txt")
    return Requirements("none", "")


def _inside(service_dir: Path, relative: str) -> Path:
    """``relative`` resolved, refusing anything (a symlink included) that leads out of the repository."""
    path = service_dir / relative
    root = _repo_root(service_dir)
    if not is_contained(root, service_dir.relative_to(root) / relative):
        raise BuildError(f"{path}: requirements must stay inside the repository (a symlink leads out)")
    if not path.is_file():
        raise BuildError(f"{path}: requirements file not found; fix 'requirements' in service.yaml")
    return path


def _repo_root(service_dir: Path) -> Path:
    """The checkout holding ``service_dir`` (nearest folder with ``.git``), else the folder itself."""
    for folder in (service_dir, *service_dir.parents):
        if (folder / ".git").exists():
            return folder
    return service_dir


def _from_file(path: Path, origin: str) -> Requirements:
    content = hashlib.sha256(path.read_bytes()).hexdigest()
    return Requirements("requirements", content, ("-r", origin), origin)


def _from_pyproject(path: Path, origin: str) -> Requirements:
    try:
        project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BuildError(f"{path}: not valid TOML: {exc}") from exc
    if "dependencies" in project.get("dynamic", []):
        raise BuildError(f"{path}: [project].dependencies is dynamic; list the dependencies or use a requirements file")
    dependencies = project.get("dependencies", [])
    if not isinstance(dependencies, list) or not all(_is_requirement(d) for d in dependencies):
        raise BuildError(f"{path}: [project].dependencies must be a list of requirement strings")
    if not dependencies:
        return Requirements("none", "", (), origin)
    ordered = sorted(dependencies)  # order does not change what gets installed
    return Requirements("pyproject", json.dumps(ordered), tuple(ordered), origin)


def _is_requirement(value: object) -> bool:
    # A leading "-" would be read as an installer option, not a requirement.
    return isinstance(value, str) and bool(value.strip()) and not value.startswith("-")


def _find_uv() -> str | None:
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("uv")


def _probe_interpreter(python: str) -> tuple[str, str]:
    found = python if os.sep in python else shutil.which(python)
    if not found or not Path(found).is_file():
        raise BuildError(f"python interpreter {python!r} for service environments not found")
    try:
        done = subprocess.run(
            [found, "-c", "import sys; print(sys.version)"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"python interpreter {found} does not run: {exc}") from exc
    return os.path.realpath(found), done.stdout.strip()


def _installer_environment() -> dict[str, str]:
    # Requirements come from git and may run build code: they get no daemon secrets and no foreign venv.
    return {
        key: value
        for key, value in os.environ.items()
        if key not in _SCRUBBED and not key.startswith(_SCRUBBED_PREFIXES)
    }


def _run(step: str, argv: list[str], cwd: Path, deadline: float, log: IO[bytes]) -> None:
    """Run one installer step in ``cwd`` (relative paths in a requirements file resolve there)."""
    log.write(f"$ {' '.join(argv)}\n".encode())
    log.flush()
    remaining = deadline - time.monotonic()
    try:
        process = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=_installer_environment(), start_new_session=True,
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
