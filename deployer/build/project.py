"""What a service's environment installs: the one rule, shared by the build and the reconciler.

Reads a service folder as its project is written: a requirements file (pins and hashes
honoured), ``pyproject.toml`` (PEP 621 — PDM, Hatch, uv, Poetry 2 — or Poetry's own
``[tool.poetry.dependencies]``), a lock beside it (``uv.lock``, ``poetry.lock``), and the
Python it asks for (``.python-version``, ``requires-python``). Pure file reading, no
installer runs here; a declaration deployer cannot read is a ``BuildError`` naming the
file and the format, never an empty environment.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from poetry.core.constraints.version import parse_constraint
from poetry.core.factory import Factory
from poetry.core.packages.utils.utils import create_nested_marker
from poetry.core.version.exceptions import InvalidVersionError

from deployer.errors import BuildError
from deployer.safety import is_contained

REQUIREMENTS_TXT = "requirements.txt"
PYPROJECT = "pyproject.toml"
UV_LOCK = "uv.lock"
POETRY_LOCK = "poetry.lock"
PYTHON_VERSION = ".python-version"
# Files that declare dependencies in formats deployer does not read, with what they are.
UNREADABLE = {
    "Pipfile": "Pipenv's Pipfile", "Pipfile.lock": "Pipenv's lock", "setup.py": "a setuptools setup.py",
    "setup.cfg": "setuptools' setup.cfg", "environment.yml": "a conda environment", "pdm.lock": "PDM's lock",
}
_FIX = "list them in [project].dependencies, or name a requirements file in service.yaml ('requirements')"
# Tables under [tool] that declare what a project needs at run time in formats deployer does not read.
_UNREADABLE_TABLES = {
    ("flit", "metadata", "requires"): "Flit's legacy metadata", ("pixi", "dependencies"): "pixi's (conda) table",
    ("pixi", "pypi-dependencies"): "pixi's table", ("conda-lock", "dependencies"): "conda-lock's table",
}


class Kind(StrEnum):
    NONE = "none"
    REQUIREMENTS = "requirements"  # a requirements file, installed with -r
    PYPROJECT = "pyproject"  # [project].dependencies
    POETRY = "poetry"  # [tool.poetry.dependencies], translated by poetry-core
    UV_LOCK = "uv-lock"  # uv.lock, installed by `uv sync --frozen`
    POETRY_LOCK = "poetry-lock"  # Poetry's dependencies, constrained to poetry.lock's versions


@dataclass(frozen=True)
class PythonRequest:
    """The Python a project asks for: ``spec`` as written and where it is written."""

    spec: str
    origin: str


@dataclass(frozen=True)
class Requirements:
    """What an environment installs. ``kind``, ``content`` and ``python`` go into the cache key.

    ``args`` go to the installer; ``constraints`` (pins from a lock) to a constraints file;
    ``origin`` is the dependency file, ``lock`` the lock used, ``files`` every file that decides
    it (for the revision's hash), ``source`` the table read, for the build step's record.
    """

    kind: str
    content: str
    args: tuple[str, ...] = ()
    origin: str = ""
    lock: str = ""
    constraints: tuple[str, ...] = ()
    python: PythonRequest | None = None
    files: tuple[str, ...] = ()
    source: str = ""
    hashed: bool = False

    def describe(self) -> str:
        """For the build step: which file and which lock."""
        if self.kind == Kind.NONE:
            what = f"no dependencies declared in {self.origin}" if self.origin else "no dependency file"
        else:
            what = f"dependencies from {self.origin}" + (f" {self.source}" if self.source else "")
        if self.lock:
            what += f", locked by {self.lock}"
        if self.hashed:
            what += " (hash-checked)"
        return what

    def digest(self, folder: Path) -> str:
        """A hash of the files that decide the environment (one file: that file's own hash)."""
        if len(self.files) == 1:
            return hashlib.sha256((folder / self.files[0]).read_bytes()).hexdigest()
        combined = hashlib.sha256()
        for name in self.files:
            combined.update(f"{name}\0".encode() + hashlib.sha256((folder / name).read_bytes()).digest())
        return combined.hexdigest()


def resolve_requirements(service_dir: Path, requirements: str | None) -> Requirements:
    """Decide what an environment for ``service_dir`` installs.

    ``requirements`` (from service.yaml) names a requirements file, ``pyproject.toml`` or a
    lock beside it. None looks in order for ``pyproject.toml`` declaring dependencies (with
    its lock), then ``requirements.txt``. From a pyproject only the dependencies are
    installed, never the project itself (its code runs from the checkout, so a code-only
    push reinstalls nothing), and no optional extras or dev groups.
    """
    python = _python_request(service_dir)
    spec = _chosen(service_dir, requirements) if requirements is not None else _found(service_dir)
    files = (*spec.files, PYTHON_VERSION) if python and python.origin == PYTHON_VERSION else spec.files
    return replace(spec, python=python or spec.python, files=files)


def _chosen(service_dir: Path, requirements: str) -> Requirements:
    path = inside(service_dir, requirements)
    if path.name in UNREADABLE:
        raise BuildError(f"{path}: {UNREADABLE[path.name]} is a format deployer cannot read; {_FIX}")
    if path.name in (UV_LOCK, POETRY_LOCK):
        folder = str(Path(requirements).parent)
        return _from_pyproject(service_dir, _sibling(folder, PYPROJECT), lock=requirements)
    if path.name == PYPROJECT:
        return _from_pyproject(service_dir, requirements)
    return _from_file(path, requirements)


def _found(service_dir: Path) -> Requirements:
    asked: PythonRequest | None = None
    if (service_dir / PYPROJECT).is_file():
        spec = _from_pyproject(service_dir, PYPROJECT)
        if spec.kind != Kind.NONE:
            return spec
        asked = spec.python  # a pyproject that declares no dependencies may still say which Python
    if (service_dir / REQUIREMENTS_TXT).is_file():
        spec = _from_file(inside(service_dir, REQUIREMENTS_TXT), REQUIREMENTS_TXT)
        return _asking(spec, asked)
    for name, what in UNREADABLE.items():
        if _declares(service_dir / name):
            raise BuildError(f"{service_dir / name}: dependencies are declared in {what}, a format deployer "
                             f"cannot read; {_FIX}")
    return _asking(Requirements(Kind.NONE, ""), asked)


def _declares(path: Path) -> bool:
    """Whether a file deployer cannot read declares dependencies (setup.cfg is often only tool settings)."""
    if not path.is_file():
        return False
    if path.name in ("setup.py", "setup.cfg"):
        return b"install_requires" in path.read_bytes()
    return True


def _asking(spec: Requirements, python: PythonRequest | None) -> Requirements:
    """``spec`` with the Python a pyproject asks for (and the pyproject among the files that decide it)."""
    if python is None:
        return spec
    return replace(spec, python=python, files=(PYPROJECT, *spec.files))


def inside(service_dir: Path, relative: str) -> Path:
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


def _sibling(folder: str, name: str) -> str:
    return name if folder in ("", ".") else f"{folder}/{name}"


# -- requirements files -----------------------------------------------------------------------------------


def _from_file(path: Path, origin: str) -> Requirements:
    data = path.read_bytes()
    hashed = b"--hash" in data  # pip enters hash-checking mode by itself; uv is told to (--require-hashes)
    return Requirements(Kind.REQUIREMENTS, hashlib.sha256(data).hexdigest(), ("-r", origin), origin,
                        files=(origin,), hashed=hashed)


# -- pyproject.toml ---------------------------------------------------------------------------------------


def _from_pyproject(service_dir: Path, origin: str, *, lock: str = "") -> Requirements:
    path = inside(service_dir, origin)
    data = _toml(path)
    project = _table(data, "project", path)
    python = _requires_python(data, path, origin)
    lock = lock or _lock_beside(service_dir, origin, data)
    if lock:
        return _locked(service_dir, origin, lock, data, python)
    spec = _declared(service_dir, path, origin, data, project)
    if spec.kind == Kind.NONE:
        _refuse_unreadable(path, data)
    source = spec.source
    if (path.parent / "pdm.lock").is_file():
        source += " (pdm.lock is not read: versions resolved afresh)"
    return Requirements(spec.kind, spec.content, spec.args, origin, python=python, files=(origin, *spec.files),
                        source=source)


def _declared(service_dir: Path, path: Path, origin: str, data: dict[str, Any],
              project: dict[str, Any]) -> Requirements:
    """The dependencies as declared: PEP 621 first (PDM, Hatch, uv, Poetry 2), then Poetry's own table."""
    if "dependencies" in project.get("dynamic", []):
        return _dynamic(service_dir, path, origin, data)
    if "dependencies" in project:
        spec = _pep621(path, project["dependencies"])
        if spec.kind != Kind.NONE:
            return spec
    poetry = _poetry_table(data, path)
    if poetry:
        return _poetry(service_dir, path, poetry)
    return Requirements(Kind.NONE, "")


def _pep621(path: Path, dependencies: object) -> Requirements:
    if not isinstance(dependencies, list) or not all(_is_requirement(d) for d in dependencies):
        raise BuildError(f"{path}: [project].dependencies must be a list of requirement strings")
    if not dependencies:
        return Requirements(Kind.NONE, "")
    ordered = sorted(dependencies)  # order does not change what gets installed
    return Requirements(Kind.PYPROJECT, json.dumps(ordered), tuple(ordered), source="[project].dependencies")


def _dynamic(service_dir: Path, path: Path, origin: str, data: dict[str, Any]) -> Requirements:
    """Dynamic dependencies read from requirements files by Hatch's or setuptools' own hook."""
    tool = data.get("tool", {})
    hatch = tool.get("hatch", {}).get("metadata", {}).get("hooks", {}).get("requirements_txt", {})
    setuptools = tool.get("setuptools", {}).get("dynamic", {}).get("dependencies", {})
    files = hatch.get("files") if isinstance(hatch, dict) else None
    if files is None and isinstance(setuptools, dict):
        files = setuptools.get("file")
    files = [files] if isinstance(files, str) else files
    if not isinstance(files, list) or not files or not all(isinstance(name, str) for name in files):
        raise BuildError(f"{path}: [project].dependencies is dynamic and not read from requirements files; {_FIX}")
    folder = str(Path(origin).parent)
    named = [_sibling(folder, name) for name in files]
    contents = [hashlib.sha256(inside(service_dir, name).read_bytes()).hexdigest() for name in named]
    args = tuple(arg for name in named for arg in ("-r", name))
    return Requirements(Kind.REQUIREMENTS, json.dumps(contents), args, files=tuple(named),
                        source=f"(dynamic, from {', '.join(named)})")


def _poetry_table(data: dict[str, Any], path: Path) -> dict[str, Any]:
    poetry = _table(data.get("tool", {}), "poetry", path)
    dependencies = _table(poetry, "dependencies", path)
    return {name: value for name, value in dependencies.items() if name.lower() != "python"}


def _poetry(service_dir: Path, path: Path, table: dict[str, Any]) -> Requirements:
    """``[tool.poetry.dependencies]`` (python excluded, optional ones left out) as PEP 508 requirements.

    poetry-core translates caret, tilde, wildcard, markers, ``python`` restrictions and path, URL
    and git dependencies exactly as Poetry does. The key is the table itself: translated paths
    are absolute, inside this checkout.
    """
    required = {name: value for name, value in table.items() if not _optional(value)}
    if not required:
        return Requirements(Kind.NONE, "")
    args = tuple(sorted(line for name, value in required.items() for line in _pep508(service_dir, path, name, value)))
    content = json.dumps(required, sort_keys=True, default=str)
    return Requirements(Kind.POETRY, content, args, source="[tool.poetry.dependencies]")


def _optional(value: object) -> bool:
    return isinstance(value, dict) and bool(value.get("optional"))


def _pep508(service_dir: Path, path: Path, name: str, value: object) -> list[str]:
    """One requirement per constraint (a list holds alternatives told apart by python or markers)."""
    lines = []
    for constraint in value if isinstance(value, list) else [value]:
        if not isinstance(constraint, str | dict):
            raise BuildError(f"{path}: [tool.poetry.dependencies].{name}: {constraint!r} is neither a version "
                             "constraint nor a table")
        try:
            line = Factory.create_dependency(name, constraint, root_dir=service_dir).to_pep_508()
            Requirement(line)
        except (InvalidRequirement, InvalidVersionError, ValueError, TypeError, AttributeError) as exc:
            raise BuildError(f"{path}: [tool.poetry.dependencies].{name}: {constraint!r} cannot be read as a "
                             f"Poetry dependency: {exc}") from exc
        lines.append(line)
    return lines


def _refuse_unreadable(path: Path, data: dict[str, Any]) -> None:
    for keys, what in _UNREADABLE_TABLES.items():
        table: Any = data.get("tool", {})
        for key in keys:
            table = table.get(key) if isinstance(table, dict) else None
        if table:
            where = ".".join(("tool", *keys))
            raise BuildError(f"{path}: dependencies are declared in [{where}] ({what}), a format deployer "
                             f"cannot read; {_FIX}")


def _is_requirement(value: object) -> bool:
    # A leading "-" would be read as an installer option, not a requirement.
    return isinstance(value, str) and bool(value.strip()) and not value.startswith("-")


# -- locks ------------------------------------------------------------------------------------------------


def _lock_beside(service_dir: Path, origin: str, data: dict[str, Any]) -> str:
    """The lock next to the pyproject: poetry.lock for a Poetry project, else uv.lock."""
    folder = str(Path(origin).parent)
    poetry_first = bool(data.get("tool", {}).get("poetry"))
    order = (POETRY_LOCK, UV_LOCK) if poetry_first else (UV_LOCK, POETRY_LOCK)
    for name in order:
        if (service_dir / _sibling(folder, name)).is_file():
            return _sibling(folder, name)
    return ""


def _locked(service_dir: Path, origin: str, lock: str, data: dict[str, Any],
            python: PythonRequest | None) -> Requirements:
    path = inside(service_dir, lock)
    if path.name == UV_LOCK:
        # uv reads its own lock (`uv sync --frozen`): the key is the lock, which holds the dependencies.
        return Requirements(Kind.UV_LOCK, hashlib.sha256(path.read_bytes()).hexdigest(), origin=origin, lock=lock,
                            python=python, files=(origin, lock), source=_lock_source(data))
    project = _table(data, "project", inside(service_dir, origin))
    declared = _declared(service_dir, inside(service_dir, origin), origin, data, project)
    if declared.kind == Kind.NONE:
        raise BuildError(f"{path}: the lock has no dependencies to install: {origin} declares none "
                         "in [project].dependencies or [tool.poetry.dependencies]")
    pins = poetry_pins(path)
    content = json.dumps([declared.content, hashlib.sha256(path.read_bytes()).hexdigest()])
    return Requirements(Kind.POETRY_LOCK, content, declared.args, origin, lock, pins, python, (origin, lock),
                        declared.source, hashed=any("--hash" in pin for pin in pins))


def _lock_source(data: dict[str, Any]) -> str:
    return "[project].dependencies" if "dependencies" in data.get("project", {}) else ""


def poetry_pins(path: Path) -> tuple[str, ...]:
    """Every package of a poetry.lock as ``name==version`` with its files' hashes (constraints).

    The installer resolves the service's own dependencies under these constraints, so it
    installs exactly the locked versions, evaluates markers for the real interpreter and
    leaves out what only another platform or a dev group needs.
    """
    data = _toml(path)
    packages = data.get("package", [])
    if not isinstance(packages, list) or not all(isinstance(p, dict) and "name" in p for p in packages):
        raise BuildError(f"{path}: not a poetry.lock: no [[package]] entries with a name and a version")
    old_hashes = data.get("metadata", {}).get("files", {})  # lock-version 1.x keeps hashes here
    names = [str(package["name"]).lower() for package in packages]
    return tuple(_pin(path, package, old_hashes, names.count(str(package["name"]).lower()) > 1)
                 for package in packages)


def _pin(path: Path, package: dict[str, Any], old_hashes: dict[str, Any], ambiguous: bool) -> str:
    name, version = package["name"], package.get("version")
    if not isinstance(version, str):
        raise BuildError(f"{path}: package {name!r} has no version")
    line = f"{name}=={version}"
    if ambiguous:  # one name locked at two versions: told apart by python version
        line += f" ; {_python_marker(path, name, package)}"
    files = package.get("files") or old_hashes.get(name, [])
    hashes = sorted({str(entry["hash"]) for entry in files if isinstance(entry, dict) and "hash" in entry})
    return " ".join([line, *(f"--hash={digest}" for digest in hashes)])


def _python_marker(path: Path, name: str, package: dict[str, Any]) -> str:
    markers = package.get("markers")
    if isinstance(markers, str) and markers:
        return markers
    try:
        return str(create_nested_marker("python_version", parse_constraint(str(package.get("python-versions")))))
    except (ValueError, InvalidVersionError) as exc:
        raise BuildError(f"{path}: package {name!r} is locked twice and its python-versions cannot tell "
                         f"the two apart: {exc}") from exc


# -- the Python asked for ---------------------------------------------------------------------------------


def _python_request(service_dir: Path) -> PythonRequest | None:
    """``.python-version`` in the service folder (its first line), if there is one."""
    path = service_dir / PYTHON_VERSION
    if not path.is_file():
        return None
    for line in inside(service_dir, PYTHON_VERSION).read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return PythonRequest(line.strip(), PYTHON_VERSION)
    raise BuildError(f"{path}: names no Python version")


def _requires_python(data: dict[str, Any], path: Path, origin: str) -> PythonRequest | None:
    """``[project].requires-python``, else Poetry's ``python`` constraint, as a PEP 440 specifier."""
    written = data.get("project", {}).get("requires-python")
    if written is not None:
        return _specifier(path, str(written), PythonRequest(str(written), f"{origin} [project].requires-python"))
    poetry = data.get("tool", {}).get("poetry", {}).get("dependencies", {})
    written = poetry.get("python") if isinstance(poetry, dict) else None
    if written is None or not isinstance(written, str):
        return None
    try:
        translated = str(parse_constraint(written))
    except (ValueError, InvalidVersionError) as exc:
        raise BuildError(f"{path}: [tool.poetry.dependencies].python {written!r} is not a version constraint") from exc
    return _specifier(path, translated, PythonRequest(translated, f"{origin} [tool.poetry.dependencies].python"))


def _specifier(path: Path, written: str, request: PythonRequest) -> PythonRequest | None:
    if written.strip() in ("", "*"):
        return None
    try:
        SpecifierSet(written)
    except InvalidSpecifier as exc:
        raise BuildError(f"{path}: the Python version {written!r} is not a version specifier: {exc}") from exc
    return request


# -- toml -------------------------------------------------------------------------------------------------


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BuildError(f"{path}: not valid TOML: {exc}") from exc


def _table(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise BuildError(f"{path}: [{key}] must be a table")
    return value
