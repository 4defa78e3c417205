"""The nginx binary and what it says: finding it, running it, trimming its messages.

``nginx -t`` output and error-log lines carry a timestamp and a pid before nginx's own words;
``nginx_message`` keeps the words (``[emerg] unknown directive "x" in FILE:12``), a few lines at
most, so an error's ``str()`` reads like nginx, not like a log.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from deployer.errors import GatewayUnavailable

# nginx and the commands it runs start from a fixed environment, never the daemon's (its secrets).
NGINX_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
_TIMEOUT = 60.0
# Logs are rotated (renamed to .1, then nginx opens the path anew) once past these sizes.
ACCESS_LOG_MAX = 64 * 1024 * 1024
ERROR_LOG_MAX = 8 * 1024 * 1024
_MAX_LINES = 3
_PREFIX = re.compile(r"^(?:\d{4}/\d\d/\d\d \d\d:\d\d:\d\d |nginx: )?")
_PID = re.compile(r"^(\[[a-z]+\]) \d+#\d+: (?:\*\d+ )?")
_SERIOUS = ("[emerg]", "[alert]", "[crit]")


def find_nginx(configured: str) -> str:
    """The binary: a path as given, else looked up on PATH (also in /usr/sbin, where Debian puts it)."""
    if "/" in configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        raise GatewayUnavailable(f"nginx not found at {configured} ([gateway] nginx): apt-get install nginx")
    found = shutil.which(configured) or shutil.which(configured, path=NGINX_ENV["PATH"])
    if found is None:
        raise GatewayUnavailable(f"{configured} not found: apt-get install nginx (or set [gateway] nginx)")
    return found


def run(command: Sequence[str], *, cwd: Path | None = None, timeout: float = _TIMEOUT) -> tuple[int, str]:
    """Exit status and combined output; a command that cannot run at all is ``GatewayUnavailable``."""
    try:
        done = subprocess.run(
            list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=NGINX_ENV, cwd=cwd, timeout=timeout, check=False,
        )
    except FileNotFoundError:
        raise GatewayUnavailable(f"{command[0]} not found: apt-get install nginx") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GatewayUnavailable(f"{' '.join(command)} did not run: {exc}") from None
    return done.returncode, done.stdout.decode("utf-8", errors="replace")


def nginx_message(output: str, *, serious_only: bool = False) -> str:
    """nginx's own words from its output or log lines: prefixes dropped, "test failed" noise dropped."""
    return "\n".join(nginx_lines(output, serious_only=serious_only)[:_MAX_LINES])


def nginx_lines(output: str, *, serious_only: bool = False) -> list[str]:
    lines: list[str] = []
    for raw in output.splitlines():
        line = _PID.sub(r"\1 ", _PREFIX.sub("", raw.strip()))
        if not line or line.startswith("configuration file ") or (serious_only and not line.startswith(_SERIOUS)):
            continue
        if line not in lines:  # bind() is retried five times with the same words
            lines.append(line)
    return lines


class ErrorLog:
    """An nginx error log read from a mark: what went wrong since a reload."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def since(self, mark: int) -> str:
        """Serious lines (emerg, alert, crit) written after ``mark``, trimmed to a few."""
        return "\n".join(self._serious(mark)[:_MAX_LINES])

    def reload_failed(self, mark: int) -> bool:
        """Whether a reload since ``mark`` has given up (bind() is retried for about 2.5 s first)."""
        lines = self._serious(mark)
        return any("still could not bind" in line or "bind()" not in line for line in lines)

    def _serious(self, mark: int, limit: int = 64 * 1024) -> list[str]:
        try:
            with self.path.open("rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(mark if mark <= size else 0)  # rotated meanwhile: read the new file
                text = handle.read(limit).decode("utf-8", errors="replace")
        except OSError:
            return []
        return nginx_lines(text, serious_only=True)
