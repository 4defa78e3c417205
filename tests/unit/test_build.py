"""Per-service environments with the real installers (uv and pip), offline: local wheels only."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

from deployer.build import BuildResult, EnvBuilder, python_for, resolve_requirements
from deployer.errors import BuildError
from tests.helpers import make_wheel

INSTALLERS = ["uv", "pip"]
OFFLINE_REQUIREMENTS = "--no-index\n--find-links ./wheels\ntinydep=={version}\n"


@pytest.fixture
def service(tmp_path: Path) -> Path:
    """A service folder in a git checkout, with two versions of a dependency as local wheels."""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    folder = repo / "services" / "svc"
    make_wheel(folder / "wheels", "tinydep", "1.0", "VALUE = 1\n")
    make_wheel(folder / "wheels", "tinydep", "2.0", "VALUE = 2\n")
    (folder / "requirements.txt").write_text(OFFLINE_REQUIREMENTS.format(version="1.0"))
    (folder / "main.py").write_text("print('v1')\n")
    return folder


def dependency_value(env_dir: Path) -> str:
    done = subprocess.run([str(python_for(env_dir)), "-c", "import tinydep; print(tinydep.VALUE)"],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("installer", INSTALLERS)
def test_built_once_reused_on_code_change_rebuilt_on_requirements_change(
    tmp_path: Path, service: Path, installer: str
) -> None:
    builder = EnvBuilder(tmp_path / "envs", installer=installer)
    first = builder.ensure(service, None)
    assert not first.reused and dependency_value(first.env_dir) == "1"
    assert "tinydep" in first.output_tail

    (service / "main.py").write_text("print('v2')\n")  # a code-only push
    again = builder.ensure(service, None)
    assert again.reused and (again.env_dir, again.key) == (first.env_dir, first.key)
    assert again.duration < 0.05, f"reusing took {again.duration:.3f}s"

    (service / "requirements.txt").write_text(OFFLINE_REQUIREMENTS.format(version="2.0"))
    changed = builder.ensure(service, "requirements.txt")
    assert not changed.reused and changed.env_dir != first.env_dir
    assert dependency_value(changed.env_dir) == "2"
    assert dependency_value(first.env_dir) == "1"  # kept: a rollback needs it


@pytest.mark.parametrize("installer", INSTALLERS)
def test_pyproject_dependencies_install_without_the_project(tmp_path: Path, service: Path, installer: str) -> None:
    wheel = service / "wheels" / "tinydep-2.0-py3-none-any.whl"
    (service / "pyproject.toml").write_text(
        f'[project]\nname = "svc"\nversion = "1.0"\ndependencies = ["tinydep @ {wheel.as_uri()}"]\n'
    )
    builder = EnvBuilder(tmp_path / "envs", installer=installer)
    built = builder.ensure(service, None)  # pyproject's dependencies win over requirements.txt
    assert dependency_value(built.env_dir) == "2"
    probe = "import importlib.metadata as m; print(sorted(d.metadata['Name'] for d in m.distributions()))"
    installed = subprocess.run([str(python_for(built.env_dir)), "-c", probe], capture_output=True, text=True)
    assert "'tinydep'" in installed.stdout and "'svc'" not in installed.stdout  # not the project itself
    (service / "pyproject.toml").write_text((service / "pyproject.toml").read_text().replace('"1.0"', '"1.1"'))
    assert builder.ensure(service, "pyproject.toml").reused  # a version bump is a code change


def test_relative_wheel_path_in_requirements_installs_offline(tmp_path: Path, service: Path) -> None:
    (service / "requirements-prod.txt").write_text("./wheels/tinydep-1.0-py3-none-any.whl\n")
    built = EnvBuilder(tmp_path / "envs", installer="uv").ensure(service, "requirements-prod.txt")
    assert dependency_value(built.env_dir) == "1"


def test_no_requirements_gives_an_empty_cached_environment(tmp_path: Path) -> None:
    folder = tmp_path / "bare"
    folder.mkdir()
    builder = EnvBuilder(tmp_path / "envs", installer="uv")
    first = builder.ensure(folder, None)
    assert not first.reused
    subprocess.run([str(python_for(first.env_dir)), "-c", "import sys; assert sys.prefix != sys.base_prefix"],
                   check=True)
    assert builder.ensure(folder, None).reused


def test_concurrent_ensure_builds_once(tmp_path: Path, service: Path) -> None:
    builder = EnvBuilder(tmp_path / "envs", installer="uv")
    results: list[BuildResult] = []
    threads = [threading.Thread(target=lambda: results.append(builder.ensure(service, None))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and sum(not result.reused for result in results) == 1
    assert len({result.env_dir for result in results}) == 1
    assert dependency_value(results[0].env_dir) == "1"
    assert list((tmp_path / "envs" / ".build").iterdir()) == [results[0].env_dir.resolve()]


def test_a_failed_install_raises_build_error_and_publishes_nothing(tmp_path: Path, service: Path) -> None:
    (service / "requirements.txt").write_text("--no-index\nno-such-package-anywhere==1.0\n")
    builder = EnvBuilder(tmp_path / "envs", installer="uv")
    with pytest.raises(BuildError, match=r"installing requirements\.txt failed") as caught:
        builder.ensure(service, None)
    assert "no-such-package-anywhere" in caught.value.output
    assert caught.value.reason == "BuildFailed"
    assert not any(path.is_symlink() for path in (tmp_path / "envs").iterdir())
    assert list((tmp_path / "envs" / ".build").iterdir()) == []


def test_the_timeout_is_enforced(tmp_path: Path, service: Path) -> None:
    builder = EnvBuilder(tmp_path / "envs", installer="pip", timeout=0.3)  # ensurepip alone takes seconds
    with pytest.raises(BuildError, match="did not finish within the build timeout"):
        builder.ensure(service, None)
    assert list((tmp_path / "envs" / ".build").iterdir()) == []


def test_requirements_choice(tmp_path: Path) -> None:
    folder = tmp_path / "svc"
    folder.mkdir()
    assert resolve_requirements(folder, None).kind == "none"
    (folder / "requirements.txt").write_text("tinydep\n")
    assert resolve_requirements(folder, None).args == ("-r", "requirements.txt")
    (folder / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")
    assert resolve_requirements(folder, None).kind == "requirements"  # no [project] dependencies
    (folder / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["b>=1", "a"]\n')
    chosen = resolve_requirements(folder, None)
    assert (chosen.kind, chosen.args) == ("pyproject", ("a", "b>=1"))
    assert resolve_requirements(folder, "requirements.txt").kind == "requirements"


def test_dependency_order_does_not_change_the_key(tmp_path: Path) -> None:
    builder = EnvBuilder(tmp_path / "envs", installer="uv")
    one, other = tmp_path / "one", tmp_path / "other"
    for folder, deps in ((one, '["a", "b"]'), (other, '["b", "a"]')):
        folder.mkdir()
        (folder / "pyproject.toml").write_text(f'[project]\nname = "x"\ndependencies = {deps}\n')
    assert builder.key_for(resolve_requirements(one, None)) == builder.key_for(resolve_requirements(other, None))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[project]\nname = "x"\ndynamic = ["dependencies"]\n', "dynamic"),
        ('[project]\ndependencies = ["--index-url=http://evil"]\n', "list of requirement strings"),
        ("[project\n", "not valid TOML"),
    ],
)
def test_unusable_pyproject_is_a_build_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "pyproject.toml").write_text(content)
    with pytest.raises(BuildError, match=message):
        resolve_requirements(tmp_path, "pyproject.toml")


def test_requirements_must_stay_inside_the_repository(tmp_path: Path, service: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("evil\n")
    (service / "escape.txt").symlink_to(outside)
    with pytest.raises(BuildError, match="inside the repository"):
        resolve_requirements(service, "escape.txt")
    shared = service.parent.parent / "common.txt"  # elsewhere in the same checkout: fine
    shared.write_text("tinydep\n")
    (service / "shared.txt").symlink_to(shared)
    assert resolve_requirements(service, "shared.txt").kind == "requirements"
    with pytest.raises(BuildError, match="not found"):
        resolve_requirements(service, "missing.txt")


def test_unknown_installer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="installer"):
        EnvBuilder(tmp_path, installer="conda")


# -- projects as they are written: Poetry, locks, hashes, the Python asked for ---------------------------------

POETRY_PYPROJECT = """[tool.poetry]
name = "svc"
version = "0.1.0"
description = ""
authors = ["Ada Dev <ada@example.com>"]

[tool.poetry.dependencies]
python = "^3.9"
tinydep = "^1.0"
extra-thing = {version = "^9.0", optional = true}

[tool.poetry.group.dev.dependencies]
pytest = "^8.0"

[build-system]
requires = ["poetry-core"]
build-backend = "poetry.core.masonry.api"
"""


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def poetry_lock(wheels: Path, version: str, *, digest: str | None = None) -> str:
    """A poetry.lock as Poetry 2 writes it: tinydep at ``version``, and a dev-only package."""
    wheel = wheels / f"tinydep-{version}-py3-none-any.whl"
    return f"""# This file is automatically @generated by Poetry 2.1.3 and should not be changed by hand.

[[package]]
name = "pytest"
version = "8.3.5"
description = "pytest: simple powerful testing with Python"
optional = false
python-versions = ">=3.8"
groups = ["dev"]
files = [
    {{file = "pytest-8.3.5-py3-none-any.whl", hash = "sha256:{'0' * 64}"}},
]

[[package]]
name = "tinydep"
version = "{version}"
description = ""
optional = false
python-versions = "*"
groups = ["main"]
files = [
    {{file = "{wheel.name}", hash = "sha256:{digest or sha256(wheel)}"}},
]

[metadata]
lock-version = "2.1"
python-versions = "^3.9"
content-hash = "{'a' * 64}"
"""


@pytest.fixture
def offline(service: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Both installers find packages only in the service's wheels folder (1.0, 1.5 and 2.0 of tinydep)."""
    wheels = service / "wheels"
    make_wheel(wheels, "tinydep", "1.5", "VALUE = 15\n")
    (service / "requirements.txt").unlink()
    for prefix in ("UV", "PIP"):
        monkeypatch.setenv(f"{prefix}_FIND_LINKS", str(wheels))
        monkeypatch.setenv(f"{prefix}_NO_INDEX", "1")
    return wheels


def test_a_poetry_only_pyproject_installs_its_dependencies_with_caret_translated(
    tmp_path: Path, service: Path, offline: Path
) -> None:
    (service / "pyproject.toml").write_text(POETRY_PYPROJECT)
    chosen = resolve_requirements(service, None)
    assert (chosen.kind, chosen.args) == ("poetry", ("tinydep (>=1.0,<2.0)",))  # python and optional left out
    built = EnvBuilder(tmp_path / "envs", installer="uv").ensure(service, None)
    assert dependency_value(built.env_dir) == "15"  # the newest 1.x, not 2.0
    assert built.summary.startswith("dependencies from pyproject.toml [tool.poetry.dependencies]; Python ")


@pytest.mark.parametrize("installer", INSTALLERS)
def test_poetry_lock_installs_the_locked_version(
    tmp_path: Path, service: Path, offline: Path, installer: str
) -> None:
    (service / "pyproject.toml").write_text(POETRY_PYPROJECT)
    (service / "poetry.lock").write_text(poetry_lock(offline, "1.0"))
    builder = EnvBuilder(tmp_path / "envs", installer=installer)
    built = builder.ensure(service, None)
    assert dependency_value(built.env_dir) == "1"  # locked, though 1.5 satisfies ^1.0 and is newer
    assert "pyproject.toml [tool.poetry.dependencies], locked by poetry.lock" in built.summary
    assert "tinydep==1.0" in (built.env_dir / "deployer-constraints.txt").read_text()

    (service / "poetry.lock").write_text(poetry_lock(offline, "1.5"))  # a new lock is a new environment
    relocked = builder.ensure(service, "pyproject.toml")
    assert not relocked.reused and dependency_value(relocked.env_dir) == "15"


def test_poetry_lock_hashes_are_checked(tmp_path: Path, service: Path, offline: Path) -> None:
    (service / "pyproject.toml").write_text(POETRY_PYPROJECT)
    (service / "poetry.lock").write_text(poetry_lock(offline, "1.0", digest="1" * 64))
    with pytest.raises(BuildError, match=r"locked by poetry\.lock failed") as caught:
        EnvBuilder(tmp_path / "envs", installer="uv").ensure(service, None)
    assert "hash" in caught.value.output.lower()


def uv_project(service: Path, offline: Path) -> None:
    """A uv project locked while only tinydep 1.0 existed; 1.5 and 2.0 appear after."""
    (service / "pyproject.toml").write_text(
        '[project]\nname = "svc"\nversion = "0.1"\nrequires-python = ">=3.9"\ndependencies = ["tinydep>=1.0"]\n'
        '[tool.uv]\nfind-links = ["./wheels"]\nno-index = true\n'
    )
    later = service.parent / "later"
    later.mkdir()
    for version in ("1.5", "2.0"):
        (offline / f"tinydep-{version}-py3-none-any.whl").rename(later / f"tinydep-{version}-py3-none-any.whl")
    subprocess.run([_uv(), "lock", "--quiet", "--no-python-downloads"], cwd=service, check=True)
    for wheel in later.iterdir():
        wheel.rename(offline / wheel.name)


def _uv() -> str:
    from deployer.build.envs import _find_uv

    found = _find_uv()
    assert found, "uv is a dependency of deployer"
    return found


@pytest.mark.parametrize("installer", INSTALLERS)
def test_uv_lock_installs_the_locked_version(tmp_path: Path, service: Path, offline: Path, installer: str) -> None:
    uv_project(service, offline)
    builder = EnvBuilder(tmp_path / "envs", installer=installer)
    built = builder.ensure(service, None)
    assert dependency_value(built.env_dir) == "1"  # not 2.0, the newest that satisfies >=1.0
    assert built.summary.startswith("dependencies from pyproject.toml [project].dependencies, locked by uv.lock; ")
    assert " sync --frozen " in built.output_tail and " + tinydep==1.0" in built.output_tail
    assert builder.ensure(service, "uv.lock").reused  # naming the lock is the same choice

    (service / "uv.lock").write_text((service / "uv.lock").read_text() + "\n")  # any change to the lock: a new key
    assert not builder.ensure(service, None).reused


def hashed_requirements(offline: Path, digest: str) -> str:
    return f"tinydep==1.0 --hash=sha256:{digest}\n"


@pytest.mark.parametrize("installer", INSTALLERS)
def test_requirements_with_hashes_are_checked(tmp_path: Path, service: Path, offline: Path, installer: str) -> None:
    wheel = offline / "tinydep-1.0-py3-none-any.whl"
    (service / "requirements.txt").write_text(hashed_requirements(offline, sha256(wheel)))
    builder = EnvBuilder(tmp_path / "envs", installer=installer)
    built = builder.ensure(service, None)
    assert dependency_value(built.env_dir) == "1" and "(hash-checked)" in built.summary
    (service / "requirements.txt").write_text(hashed_requirements(offline, "2" * 64))
    with pytest.raises(BuildError, match=r"installing requirements\.txt failed") as caught:
        builder.ensure(service, None)
    assert "hash" in caught.value.output.lower()


def other_python() -> Path | None:
    """A CPython of another minor version installed on this host (pyenv's, here), if any."""
    import glob
    import sys

    for candidate in sorted(glob.glob("/root/.pyenv/versions/3.*/bin/python3.*"), reverse=True):
        minor = Path(candidate).name.removeprefix("python3.")
        if minor.isdigit() and 9 <= int(minor) != sys.version_info.minor:
            return Path(candidate)
    return None


def test_python_version_file_chooses_an_installed_interpreter(
    tmp_path: Path, service: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = other_python()
    if other is None:
        pytest.skip("no second CPython minor version is installed on this host")
    monkeypatch.setenv("PATH", f"{other.parent}:{os.environ['PATH']}")
    minor = other.name.removeprefix("python")
    (service / ".python-version").write_text(f"{minor}\n")
    builder = EnvBuilder(tmp_path / "envs", installer="uv")
    built = builder.ensure(service, None)
    done = subprocess.run([str(python_for(built.env_dir)), "-c", "import sys, tinydep; print(sys.version)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.startswith(minor + ".")
    assert f"; Python {minor}." in built.summary and built.summary.endswith(f" for {minor} in .python-version")
    (service / ".python-version").unlink()  # the configured interpreter again: another environment
    assert builder.ensure(service, None).env_dir != built.env_dir


@pytest.mark.parametrize(
    ("file", "content", "named"),
    [
        (".python-version", "3.99\n", ".python-version asks for Python 3.99"),
        ("pyproject.toml", '[project]\nname = "x"\nrequires-python = ">=3.99"\ndependencies = ["tinydep"]\n',
         "pyproject.toml [project].requires-python asks for Python >=3.99"),
        ("pyproject.toml", '[tool.poetry.dependencies]\npython = "^3.99"\ntinydep = "*"\n',
         "pyproject.toml [tool.poetry.dependencies].python asks for Python >=3.99,<4.0"),
    ],
)
@pytest.mark.parametrize("installer", INSTALLERS)
def test_a_python_that_is_not_installed_is_a_clear_error(
    tmp_path: Path, service: Path, file: str, content: str, named: str, installer: str
) -> None:
    (service / file).write_text(content)
    with pytest.raises(BuildError, match=re.escape(named) + ", which is not installed on this host"):
        EnvBuilder(tmp_path / "envs", installer=installer).ensure(service, None)


def test_a_satisfied_python_request_keeps_the_configured_interpreter(tmp_path: Path, service: Path) -> None:
    builder = EnvBuilder(tmp_path / "envs", installer="uv")
    plain = builder.key_for(resolve_requirements(service, None))
    (service / "pyproject.toml").write_text('[project]\nname = "x"\nrequires-python = ">=3.9"\n')
    assert builder.key_for(resolve_requirements(service, None)) == plain  # same interpreter, same environment


@pytest.mark.parametrize(
    ("files", "named", "message"),
    [
        ({"Pipfile": "[packages]\nrequests = '*'\n"}, None, "Pipfile: dependencies are declared in Pipenv's Pipfile"),
        ({"setup.py": "from setuptools import setup\nsetup(install_requires=['x'])\n"}, "setup.py",
         "setup.py: a setuptools setup.py is a format deployer cannot read"),
        ({"pyproject.toml": '[tool.flit.metadata]\nmodule = "svc"\nrequires = ["requests"]\n'}, None,
         r"pyproject.toml: dependencies are declared in \[tool.flit.metadata.requires\]"),
        ({"pyproject.toml": '[project]\nname = "x"\ndynamic = ["dependencies"]\n'}, None, "is dynamic"),
        ({"pyproject.toml": '[tool.poetry.dependencies]\nthing = "^1 || ^x"\n'}, None,
         r"\[tool.poetry.dependencies\].thing: '\^1 \|\| \^x' cannot be read as a Poetry dependency"),
    ],
)
def test_dependencies_in_a_format_deployer_cannot_read_are_a_named_error(
    tmp_path: Path, files: dict[str, str], named: str | None, message: str
) -> None:
    folder = tmp_path / "svc"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_text(content)
    with pytest.raises(BuildError, match=message):
        resolve_requirements(folder, named)


def test_tool_settings_in_setup_cfg_are_not_dependencies(tmp_path: Path) -> None:
    (tmp_path / "setup.cfg").write_text("[flake8]\nmax-line-length = 100\n")
    assert resolve_requirements(tmp_path, None).kind == "none"
    (tmp_path / "setup.cfg").write_text("[options]\ninstall_requires =\n    requests\n")
    with pytest.raises(BuildError, match=r"setup\.cfg: dependencies are declared in setuptools' setup\.cfg"):
        resolve_requirements(tmp_path, None)


def test_dynamic_dependencies_read_from_requirements_files(tmp_path: Path) -> None:
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "requirements.txt").write_text("tinydep\n")
    for hook in ('[tool.hatch.metadata.hooks.requirements_txt]\nfiles = ["requirements.txt"]\n',
                 '[tool.setuptools.dynamic]\ndependencies = {file = ["requirements.txt"]}\n'):
        (folder / "pyproject.toml").write_text(f'[project]\nname = "x"\ndynamic = ["dependencies"]\n{hook}')
        chosen = resolve_requirements(folder, None)
        assert (chosen.kind, chosen.args, chosen.files) == (
            "requirements", ("-r", "requirements.txt"), ("pyproject.toml", "requirements.txt"))


def test_pep621_dependencies_win_over_poetry_tables_and_locks_decide_the_revision_hash(tmp_path: Path) -> None:
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["tinydep>=1"]\n'
        '[tool.poetry.dependencies]\ntinydep = {develop = true}\n')
    plain = resolve_requirements(folder, None)
    assert (plain.kind, plain.args, plain.files) == ("pyproject", ("tinydep>=1",), ("pyproject.toml",))
    (folder / "pdm.lock").write_text("# a PDM lock\n")
    assert "pdm.lock is not read" in resolve_requirements(folder, None).describe()  # said, not silently ignored
    (folder / "pdm.lock").unlink()
    (folder / "uv.lock").write_text("version = 1\n")
    (folder / ".python-version").write_text("3.11\n")
    locked = resolve_requirements(folder, None)
    assert (locked.kind, locked.lock, locked.files) == ("uv-lock", "uv.lock",
                                                        ("pyproject.toml", "uv.lock", ".python-version"))
    before = locked.digest(folder)
    (folder / "uv.lock").write_text("version = 1\n# relocked\n")
    assert resolve_requirements(folder, None).digest(folder) != before


def test_a_pyproject_without_dependencies_still_says_which_python(tmp_path: Path) -> None:
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "pyproject.toml").write_text('[project]\nname = "x"\nrequires-python = ">=3.9"\n[tool.ruff]\n')
    (folder / "requirements.txt").write_text("tinydep\n")
    chosen = resolve_requirements(folder, None)
    assert (chosen.kind, chosen.origin, chosen.files) == ("requirements", "requirements.txt",
                                                          ("pyproject.toml", "requirements.txt"))
    assert chosen.python is not None and chosen.python.spec == ">=3.9"
    (folder / "requirements.txt").unlink()
    bare = resolve_requirements(folder, None)
    assert (bare.kind, bare.python) == ("none", chosen.python)
