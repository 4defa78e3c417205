"""Which interpreter an environment is made from: the configured one, or the one the project asks for.

The configured interpreter (``[build] python``, default deployer's own) is used whenever it
satisfies the project's ``.python-version`` or ``requires-python``; otherwise an installed one
that does is found (``uv python find``, never downloading, then ``pythonX.Y`` on PATH). None
found is a ``BuildError`` naming the file and the version asked for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from deployer.build.project import PYTHON_VERSION, PythonRequest
from deployer.errors import BuildError

_PROBE = "import platform, sys; print(platform.python_version()); print(sys.version)"
# .python-version forms that name a CPython release: "3.12", "3.12.1", "cpython-3.12", "python3.12".
_RELEASE = re.compile(r"(?:cpython[-@]?|python)?(\d+(?:\.\d+){0,2})")
_MINORS = range(30, 5, -1)  # python3.30 … python3.6, newest first


@dataclass(frozen=True)
class Interpreter:
    path: str  # real path
    version: str  # sys.version: part of the cache key
    release: str  # "3.11.7"


class Interpreters:
    """Finds and remembers interpreters; one probe per executable for the daemon's life."""

    def __init__(self, default: str, uv: str | None) -> None:
        self._default = default
        self._uv = uv
        self._found: dict[str, Interpreter] = {}
        self._guard = threading.Lock()

    def default(self) -> Interpreter:
        return self._remember(self._default, lambda: probe(self._default))

    def choose(self, request: PythonRequest | None, service_dir: Path) -> Interpreter:
        """The default when it satisfies ``request``, else an installed interpreter that does."""
        default = self.default()
        if request is None or satisfies(default, request):
            return default
        return self._remember(f"request:{request.spec}", lambda: self._find(request, service_dir, default))

    def _remember(self, key: str, find: Callable[[], Interpreter]) -> Interpreter:
        with self._guard:
            known = self._found.get(key)
        if known is None:
            known = find()  # outside the lock: a probe takes a while, and twice is harmless
            with self._guard:
                self._found[key] = known
        return known

    def _find(self, request: PythonRequest, service_dir: Path, default: Interpreter) -> Interpreter:
        for candidate in (*self._uv_finds(request.spec), *_on_path(request)):
            try:
                interpreter = probe(candidate)
            except BuildError:
                continue  # a broken executable (a pyenv shim of another version, say)
            if satisfies(interpreter, request):
                return interpreter
        raise BuildError(f"{service_dir / request.origin} asks for Python {request.spec}, which is not installed "
                         f"on this host (the configured one is {default.release}); install it or change the file")

    def _uv_finds(self, spec: str) -> list[str]:
        if self._uv is None:
            return []
        try:
            done = subprocess.run([self._uv, "python", "find", "--no-python-downloads", spec],
                                  capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return []
        return [done.stdout.strip()] if done.returncode == 0 and done.stdout.strip() else []


def satisfies(interpreter: Interpreter, request: PythonRequest) -> bool:
    """Whether ``interpreter`` is what ``request`` asks for (a release prefix, or a specifier)."""
    release = Version(interpreter.release)
    if request.origin == PYTHON_VERSION:
        named = _RELEASE.fullmatch(request.spec.strip().lower())
        if named is None:
            return False  # another implementation or form: left to uv
        wanted = named.group(1).split(".")
        return [str(part) for part in release.release[: len(wanted)]] == wanted
    try:
        return SpecifierSet(request.spec).contains(release, prereleases=True)
    except InvalidVersion:
        return False


def probe(python: str) -> Interpreter:
    """Run ``python`` once and ask its version."""
    found = python if os.sep in python else shutil.which(python)
    if not found or not Path(found).is_file():
        raise BuildError(f"python interpreter {python!r} for service environments not found")
    try:
        done = subprocess.run([found, "-c", _PROBE], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"python interpreter {found} does not run: {exc}") from exc
    release, _, version = done.stdout.partition("\n")
    return Interpreter(os.path.realpath(found), version.strip(), release.strip())


def _on_path(request: PythonRequest) -> list[str]:
    """``pythonX.Y`` executables on PATH that could be what ``request`` asks for."""
    named = _RELEASE.fullmatch(request.spec.strip().lower()) if request.origin == PYTHON_VERSION else None
    if named is not None:
        names = [f"python{'.'.join(named.group(1).split('.')[:2])}"]
    else:
        names = [f"python3.{minor}" for minor in _MINORS]
    return [found for name in names if (found := shutil.which(name))]
