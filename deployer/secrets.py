"""Service secrets: names in service.yaml, values in files under the secrets dir.

A secret ``HF_TOKEN`` is the file ``<secrets_dir>/HF_TOKEN`` (trailing newline
stripped). Values never reach a log, the database or the page; only names do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from deployer.errors import Reason, StalledError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class SecretMissing(StalledError):
    reason = Reason.SECRET_MISSING


class SecretStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

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

    def _read(self, name: str) -> str | None:
        if not _NAME.match(name):
            return None
        try:
            return (self.directory / name).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError:
            return None
