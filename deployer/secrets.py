"""Service secrets: names in service.yaml, values in files under the secrets dir; and their masking.

A secret ``HF_TOKEN`` is the file ``<secrets_dir>/HF_TOKEN`` (trailing newline
stripped). Values never reach a log, the database or the page; only names do.
``SecretStore.mask`` replaces every known value (the service secrets and the
daemon's own tokens) in a text: service output is masked wherever it is kept or shown.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from deployer.errors import Reason, StalledError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MASK = "******"
MIN_MASKED = 4  # shorter values would mask ordinary words; such a value is no secret anyway
_REFRESH = 2.0  # seconds a read of the secrets dir is reused by ``mask``
_MAX_SECRET_BYTES = 64 * 1024


class SecretMissing(StalledError):
    reason = Reason.SECRET_MISSING


class SecretStore:
    def __init__(self, directory: Path, *, also_mask: Iterable[str | None] = ()) -> None:
        self.directory = directory
        self._static = {value for value in also_mask if value}
        self._guard = threading.Lock()
        self._pattern: re.Pattern[str] | None = None
        self._read_at = float("-inf")

    def resolve(self, names: Iterable[str], *, service: str) -> dict[str, str]:
        """Values for ``names``; one clear error listing every missing name."""
        values: dict[str, str] = {}
        missing: list[str] = []
        for name in names:
            value = self._read(name)
            if value is None:
                missing.append(name)
            else:
                values[name] = value
        if missing:
            raise SecretMissing(
                f"{service}: secret {', '.join(missing)} not set: put each value in a file "
                f"named after it under {self.directory}; the previous revision keeps serving"
            )
        return values

    def also_mask(self, value: str | None) -> None:
        """Mask one more value (a token the daemon made itself)."""
        if value:
            with self._guard:
                self._static.add(value)
                self._read_at = float("-inf")

    def mask(self, text: str) -> str:
        """``text`` with every whole secret value replaced by ``******`` (longest first)."""
        pattern = self._current_pattern()
        return pattern.sub(MASK, text) if pattern is not None and text else text

    def _current_pattern(self) -> re.Pattern[str] | None:
        with self._guard:
            now = time.monotonic()
            if now - self._read_at >= _REFRESH:
                values = {value for value in (*self._static, *self._all_values()) if len(value) >= MIN_MASKED}
                ordered = sorted(values, key=len, reverse=True)
                self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
                self._read_at = now
            return self._pattern

    def _all_values(self) -> list[str]:
        try:
            names = [entry.name for entry in os.scandir(self.directory) if entry.is_file()]
        except OSError:
            return []
        return [value for value in map(self._read, names) if value]

    def _read(self, name: str) -> str | None:
        if not _NAME.match(name):
            return None
        try:
            with (self.directory / name).open(encoding="utf-8") as handle:
                return handle.read(_MAX_SECRET_BYTES).rstrip("\r\n")
        except (OSError, UnicodeDecodeError):
            return None


def local_api_token(state_dir: Path) -> str:
    """The API token of a daemon that has none configured: made once, kept 0600 in the state dir.

    The CLI on the same host reads it (same state dir), so every verb works with no set-up;
    a remote CLI still needs the token given to it.
    """
    path = state_dir / "api-token"
    existing = read_local_api_token(state_dir)
    if existing:
        return existing
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token


def read_local_api_token(state_dir: Path) -> str | None:
    try:
        return (state_dir / "api-token").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None
