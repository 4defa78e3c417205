"""Field-level differences between two resolved specs, for history pages and ``deployer diff``.

Specs are flattened to dotted paths (``env.MODEL_NAME``, ``argv[2]``); values
under keys that look secret, and every literal demo header value, are masked, so a
diff can be shown anywhere (a header's ``{secret: NAME}`` shows its name).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

MASK = "••••••"
_SECRET_KEY = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE|CREDENTIAL)", re.IGNORECASE)
_PROVENANCE = frozenset({"sha"})
_HEADER = re.compile(r"(^|\.)headers\.")  # a demo's request headers: demo[0].headers.token


@dataclass(frozen=True)
class Change:
    path: str
    old: str | None
    new: str | None

    @property
    def kind(self) -> str:
        return "added" if self.old is None else "removed" if self.new is None else "changed"


def spec_diff(old: dict[str, Any] | None, new: dict[str, Any]) -> list[Change]:
    """What changed from ``old`` to ``new`` (everything is 'added' when there is no old)."""
    before = flatten({k: v for k, v in (old or {}).items() if k not in _PROVENANCE}, mask=False)
    after = flatten({k: v for k, v in new.items() if k not in _PROVENANCE}, mask=False)
    return [Change(path, _shown(path, before.get(path)), _shown(path, after.get(path)))
            for path in sorted(set(before) | set(after)) if before.get(path) != after.get(path)]


def _shown(path: str, value: str | None) -> str | None:
    """Compare raw values (a changed secret still shows as changed), show masked ones."""
    return MASK if value is not None and _masked(path) else value


def _masked(path: str) -> bool:
    if _HEADER.search(path) is not None:
        return not path.endswith(".secret")  # {secret: NAME} is a name; anything else a value
    return bool(_SECRET_KEY.search(path.rsplit(".", 1)[-1]))


def flatten(value: Any, prefix: str = "", *, mask: bool = True) -> dict[str, str]:
    if isinstance(value, dict):
        flat: dict[str, str] = {}
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            flat.update({path: MASK} if mask and _masked(path) and not isinstance(item, dict | list)
                        else flatten(item, path, mask=mask))
        return flat
    if isinstance(value, list | tuple):
        if not value:
            return {prefix: "[]"}
        flat = {}
        for index, item in enumerate(value):
            flat.update(flatten(item, f"{prefix}[{index}]", mask=mask))
        return flat
    return {prefix: "null" if value is None else str(value)}


def with_previous(newest_first: Sequence[T]) -> list[tuple[T, T | None]]:
    """Each item of a newest-first history beside the one before it (None for the oldest); [] for none."""
    return list(zip(newest_first, [*newest_first[1:], None], strict=False))
