"""Service secrets: names in service.yaml, values in files under the secrets dir; and their masking.

A secret ``HF_TOKEN`` of service ``svc`` is the file ``<secrets_dir>/svc/HF_TOKEN`` (this
service only) or else ``<secrets_dir>/HF_TOKEN`` (shared by every service naming it); a
trailing newline is stripped. Values never reach a log, the database or the page; only names do.
``SecretStore.mask`` replaces every whole known value (the service secrets and the daemon's own
tokens) in a text. A value shorter than ``MIN_LENGTH`` cannot be masked without garbling ordinary
words ("can't" holds "t"), so such a value is refused rather than used unmasked.
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
_SERVICE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
MASK = "******"
# Masked in free text only from this length: a shorter value would hit ordinary words, and a
# service secret that short is refused (never delivered unmasked).
MIN_LENGTH = 8
_REFRESH = 2.0  # seconds a read of the secrets dir is reused by ``mask``
MAX_SECRET_BYTES = 64 * 1024


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
        """Values for ``names`` (the service's own first, then shared); one error naming every problem."""
        values: dict[str, str] = {}
        missing: list[str] = []
        short: list[str] = []
        for name in names:
            value = self.value(name, service=service)
            if value is None:
                missing.append(name)
            elif len(value) < MIN_LENGTH:
                short.append(name)
            else:
                values[name] = value
        problems = []
        if missing:
            problems.append(f"secret {', '.join(missing)} not set: put each value in the file "
                            f"{self.directory}/{service}/NAME (this service only) or {self.directory}/NAME (shared)")
        if short:
            problems.append(f"secret {', '.join(short)} shorter than {MIN_LENGTH} characters: too short to be "
                            "masked in logs and pages, so it is not used; give it a longer value")
        if problems:
            raise SecretMissing(f"{service}: " + "; ".join(problems))
        return values

    def value(self, name: str, *, service: str) -> str | None:
        """One secret's value for ``service``: its own file, else the shared one; None when neither exists."""
        raw = self.content(name, service=service)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            return None

    def content(self, name: str, *, service: str) -> bytes | None:
        """The secret file's bytes exactly (for ``files:``), the service's own first; None when missing."""
        if not _NAME.match(name):
            return None
        folders = [self.directory / service] if _SERVICE.match(service) else []
        for folder in (*folders, self.directory):
            found = _read(folder / name)
            if found is not None and len(found) > MAX_SECRET_BYTES:
                raise SecretMissing(f"{service}: secret {name} is larger than {MAX_SECRET_BYTES // 1024} KiB "
                                    f"({folder / name}); it is not used")
            if found is not None:
                return found
        return None

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
                values = {value for value in (*self._static, *self._all_values()) if len(value) >= MIN_LENGTH}
                ordered = sorted(values, key=len, reverse=True)
                self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
                self._read_at = now
            return self._pattern

    def _all_values(self) -> list[str]:
        """Every value under the secrets dir: the shared files and each service's own folder."""
        values = []
        for path in _secret_files(self.directory):
            raw = _read(path)
            if raw is not None and len(raw) > MAX_SECRET_BYTES:
                continue  # refused when used, so never delivered
            try:
                text = raw.decode("utf-8").rstrip("\r\n") if raw is not None else ""
            except UnicodeDecodeError:
                continue
            if text:
                values.append(text)
        return values


def _secret_files(directory: Path) -> list[Path]:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    found = [Path(entry.path) for entry in entries if entry.is_file() and _NAME.match(entry.name)]
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and _SERVICE.match(entry.name):
            try:
                found += [Path(inner.path) for inner in os.scandir(entry.path)
                          if inner.is_file() and _NAME.match(inner.name)]
            except OSError:
                continue
    return found


def _read(path: Path) -> bytes | None:
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_SECRET_BYTES + 1)  # one past the cap: too large shows
    except OSError:
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
