"""Per-service environments with the real installers (uv and pip), offline: local wheels only."""

from __future__ import annotations

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
