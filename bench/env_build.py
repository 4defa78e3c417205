"""Benchmark 2: push to healthy, requirements change: the environment build.

deployer builds a service's environment with ``deployer.build.EnvBuilder`` (uv when present, the
same object the daemon uses). Baseline in the same run, same requirements file, same interpreter:
plain ``python -m venv ENV && ENV/bin/python -m pip install -r requirements.txt``.

The requirements are a real web/model-service stack (starlette, uvicorn, pydantic, httpx, jinja2,
SQLAlchemy, requests, psutil, ... with their dependencies, compiled extensions included), served
from a local wheelhouse (``--no-index --find-links``) made by repacking the wheels installed in
deployer's own venv: the figure is about the installer, not the network. Rounds interleave
deployer with a cold uv cache (a fresh cache per build: the worst case), deployer with a warm uv
cache (the steady state on a deploy host: a requirements change mostly reinstalls packages uv has
seen before), and the baseline. deployer's pip fallback (``[build] installer = "pip"``) is timed too.

Run: ``.venv/bin/python bench/env_build.py [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata as md
import os
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from packaging.requirements import Requirement

from bench.common import Cleanup, Report, log, median, run, summary
from deployer.build import EnvBuilder

ROOTS = ("starlette", "uvicorn", "pydantic", "httpx", "jinja2", "sqlalchemy", "requests", "psutil",
         "prometheus-client", "python-multipart", "click")
IMPORTS = "import starlette, uvicorn, pydantic, httpx, jinja2, sqlalchemy, requests, psutil, prometheus_client"
RATIO_TARGET = 3.0
_SKIPPED_META = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}


def closure(roots: tuple[str, ...]) -> list[md.Distribution]:
    """The installed distributions ``roots`` need (extras and false markers left out)."""
    found: dict[str, md.Distribution] = {}
    pending = list(roots)
    while pending:
        name = _canonical(pending.pop())
        if name in found:
            continue
        dist = md.distribution(name)
        found[name] = dist
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            pending.append(requirement.name)
    return sorted(found.values(), key=lambda d: _canonical(d.metadata["Name"]))


def repack(dist: md.Distribution, out: Path) -> Path:
    """A wheel of an installed distribution: its files under site-packages and a fresh RECORD."""
    name, version = dist.metadata["Name"], dist.version
    wheel_meta = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")]
    parts = [sorted({tag.split("-")[i] for tag in tags}) for i in range(3)]
    tag = "-".join(".".join(values) for values in parts)
    files = [PurePosixPath(str(f)) for f in dist.files or []]
    dist_info = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    chosen = [f for f in files if f.parts[0] != ".." and "__pycache__" not in f.parts and f.suffix != ".pyc"
              and not (f.parts[0] == dist_info and f.name in _SKIPPED_META)]
    wheel = out / f"{_canonical(name).replace('-', '_')}-{version}-{tag}.whl"
    record: list[str] = []
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for relative in chosen:
            data = Path(str(dist.locate_file(str(relative)))).read_bytes()
            archive.writestr(str(relative), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{relative},sha256={digest},{len(data)}")
        record.append(f"{dist_info}/RECORD,,")
        archive.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return wheel


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def interpreter() -> str:
    """The interpreter EnvBuilder makes environments from (the daemon's, resolved to the real one)."""
    return EnvBuilder(Path("/nonexistent")).interpreter()[0]


def build_deployer(root: Path, service: Path, cache: Path, installer: str) -> float:
    os.environ["UV_CACHE_DIR"] = str(cache)  # EnvBuilder passes the environment through to uv
    builder = EnvBuilder(root, installer=installer, timeout=600)
    started = time.monotonic()
    result = builder.ensure(service, "requirements.txt")
    took = time.monotonic() - started
    if result.reused:
        raise RuntimeError("the environment was reused: the benchmark needs a fresh build")
    return took


def build_baseline(env_dir: Path, service: Path, python: str) -> tuple[float, float]:
    """(venv seconds, pip install seconds) of the plain way."""
    environ = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    started = time.monotonic()
    run([python, "-m", "venv", str(env_dir)], env=environ, timeout=300)
    created = time.monotonic()
    run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-r", "requirements.txt"], cwd=service,
        env=environ, timeout=600)
    return created - started, time.monotonic() - created


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=420, help="hard limit for the whole script, seconds")
    args = parser.parse_args()
    report = Report("env_build", "2. Requirements change: environment build (deployer's installer vs venv + pip)",
                    params={"rounds": args.rounds})
    saved_cache = os.environ.get("UV_CACHE_DIR")
    with Cleanup(args.timeout) as cleanup:
        cleanup.add("restore UV_CACHE_DIR", _restore_env, "UV_CACHE_DIR", saved_cache)
        root = cleanup.tempdir("env")
        wheelhouse = root / "wheelhouse"
        wheelhouse.mkdir()
        dists = closure(ROOTS)
        wheels = [repack(dist, wheelhouse) for dist in dists]
        size_mb = sum(w.stat().st_size for w in wheels) / 1024**2
        log(f"wheelhouse: {len(wheels)} wheels, {size_mb:.1f} MB")
        service = root / "service"
        service.mkdir()
        (service / "requirements.txt").write_text(
            f"--no-index\n--find-links {wheelhouse}\n"
            + "".join(f"{d.metadata['Name']}=={d.version}\n" for d in dists))
        python = interpreter()
        installer = EnvBuilder(root / "probe").installer
        warm = root / "uv-cache-warm"
        build_deployer(root / "envs-prime", service, warm, "auto")  # fills the warm cache (not measured)
        cold, warm_times, pip_fallback, base_venv, base_pip = [], [], [], [], []
        for index in range(args.rounds):
            order = ["cold", "warm", "baseline"]
            order = order[index % 3:] + order[:index % 3]
            for kind in order:
                if kind == "cold":
                    cold.append(build_deployer(root / f"envs-cold-{index}", service, root / f"uv-cache-{index}",
                                               "auto"))
                elif kind == "warm":
                    warm_times.append(build_deployer(root / f"envs-warm-{index}", service, warm, "auto"))
                else:
                    venv_s, pip_s = build_baseline(root / f"baseline-{index}", service, python)
                    base_venv.append(venv_s)
                    base_pip.append(pip_s)
            log(f"round {index + 1}: deployer cold {cold[-1]:.2f}s, warm {warm_times[-1]:.2f}s | "
                f"venv+pip {base_venv[-1] + base_pip[-1]:.2f}s")
            shutil.rmtree(root / f"uv-cache-{index}", ignore_errors=True)
        if args.rounds:
            pip_fallback.append(build_deployer(root / "envs-pip", service, warm, "pip"))
        for env_dir in (next((root / "envs-cold-0").glob("[!.]*")), root / "baseline-0"):
            run([str(env_dir / "bin" / "python"), "-c", IMPORTS])  # both environments really work
        base = [v + p for v, p in zip(base_venv, base_pip, strict=True)]
        speed_cold = median(base) / median(cold)
        speed_warm = median(base) / median(warm_times)
        report.add(f"env build, uv cold cache ({len(wheels)} local wheels)", median(cold), median(base), "s",
                   target=f"<= {1 / RATIO_TARGET:.2f}x (>= {RATIO_TARGET:g}x faster)", met=speed_cold >= RATIO_TARGET,
                   note=f"ratio column = deployer/baseline; speed-up {speed_cold:.1f}x")
        report.add("env build, uv warm cache (steady state)", median(warm_times), median(base), "s",
                   target=f"<= {1 / RATIO_TARGET:.2f}x (>= {RATIO_TARGET:g}x faster)", met=speed_warm >= RATIO_TARGET,
                   note=f"speed-up {speed_warm:.1f}x")
        report.add("  baseline: python -m venv (with pip)", None, median(base_venv), "s")
        report.add("  baseline: pip install -r", None, median(base_pip), "s")
        report.add("deployer with installer = pip (fallback)", median(pip_fallback), median(base), "s",
                   note="one build; the fallback is plain venv + pip, so about 1x is expected")
        report.notes.append(f"installer deployer picked: {installer}; interpreter {python}; wheelhouse "
                            f"{len(wheels)} wheels / {size_mb:.1f} MB: "
                            + ", ".join(f"{d.metadata['Name']}" for d in dists))
        report.samples = {"deployer_cold": summary(cold), "deployer_warm": summary(warm_times),
                          "baseline": summary(base), "baseline_venv": summary(base_venv),
                          "baseline_pip": summary(base_pip), "deployer_pip_fallback": pip_fallback,
                          "raw": {"cold": cold, "warm": warm_times, "venv": base_venv, "pip": base_pip}}
    report.finish()
    return 0


def _restore_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


if __name__ == "__main__":
    sys.exit(main())
