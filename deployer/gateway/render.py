"""nginx config from the operator-editable jinja templates in ``templates/nginx/``.

Deterministic: StrictUndefined, routes sorted, no clock. The generation is a hash of the
rendered text itself (rendered once with a placeholder, then the placeholder replaced), so
any change to routes, settings or templates makes a new generation and nothing else does.
"""

from __future__ import annotations

import hashlib
import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from deployer.errors import GatewayRejected
from deployer.gateway.routes import MARKER_PATH, RouteTable, upstream_address, upstream_name

_PLACEHOLDER = "ffffffffffffffff"
_GENERATION_LENGTH = 16
_TOKEN = re.compile(rf"(?<![0-9a-f])[0-9a-f]{{{_GENERATION_LENGTH}}}(?![0-9a-f])")
# Paths and addresses that go into nginx syntax: no whitespace, quotes, ';', '{', '}', '$', '#'.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+@=,:~-]*")
_SAFE_LISTEN = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]|\*):[0-9]{1,5}")


@dataclass(frozen=True)
class Rendered:
    text: str
    generation: str


def nginx_path(path: Path, what: str) -> str:
    """A filesystem path for nginx syntax, refused when it holds anything but safe characters."""
    text = str(path)
    if not _SAFE_PATH.fullmatch(text):
        raise GatewayRejected(f"{what} {text!r} cannot go into nginx syntax: "
                              "use letters, digits and ._/+@=,:~- only (no whitespace, quotes, ; {{ }} $ #)")
    return text


def nginx_listen(listen: str) -> str:
    if not _SAFE_LISTEN.fullmatch(listen):
        raise GatewayRejected(f"[gateway] listen {listen!r} must be HOST:PORT")
    return listen


class ConfigRenderer:
    """One template (the whole nginx.conf, or the routes file of external mode) and its fixed values."""

    def __init__(self, templates_dir: Path, template: str, values: Mapping[str, Any]) -> None:
        self.template = template
        self._folder = templates_dir / "nginx"
        self._values = dict(values)
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(self._folder), undefined=jinja2.StrictUndefined,
            autoescape=False,  # noqa: S701 - nginx syntax, not HTML; every value is allow-listed before
            keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
            auto_reload=True,  # operators edit the templates; an edit applies with the next change
        )

    def render(self, table: RouteTable) -> Rendered:
        context = {**self._values, "generation": _PLACEHOLDER, "marker_path": MARKER_PATH,
                   "routes": [_route_view(route) for route in table.routes],
                   "path_routes": [_route_view(route) for route in table.by_path],
                   "port_routes": [_route_view(route) for route in table.by_port]}
        text = self._render(context)
        if _PLACEHOLDER not in text or MARKER_PATH not in text:
            raise GatewayRejected(f"{self._folder / self.template}: the config must answer {MARKER_PATH} "
                                  "with {{ generation }}, or no change can be confirmed live")
        generation = hashlib.sha256(text.encode("utf-8")).hexdigest()[:_GENERATION_LENGTH]
        return Rendered(text.replace(_PLACEHOLDER, generation), generation)

    def _render(self, context: Mapping[str, Any]) -> str:
        try:
            return self._env.get_template(self.template).render(context)
        except jinja2.TemplateSyntaxError as exc:
            raise GatewayRejected(f"{exc.filename or self.template}:{exc.lineno}: {exc.message}") from None
        except jinja2.TemplateNotFound as exc:
            raise GatewayRejected(f"{self._folder}: template {exc.name} not found") from None
        except jinja2.TemplateError as exc:  # StrictUndefined, a filter on a wrong type ...
            raise GatewayRejected(f"{_template_line(exc) or self._folder / self.template}: {exc}") from None


def generation_of(text: str | None) -> str | None:
    """The generation a rendered config carries, or None (not rendered by deployer, or edited since).

    Self-checking: the generation is the token that, put back to the placeholder, hashes to itself.
    """
    text = text or ""
    for token in dict.fromkeys(_TOKEN.findall(text)):
        if hashlib.sha256(text.replace(token, _PLACEHOLDER).encode("utf-8")).hexdigest().startswith(token):
            return str(token)
    return None


def _template_line(exc: BaseException) -> str | None:
    """``FILE.j2:LINE`` of the innermost template frame (jinja puts template lines into tracebacks)."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename.endswith(".j2")]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None


def _route_view(route: Any) -> dict[str, Any]:
    return {
        "service": route.service,
        "revision": "" if route.revision is None else str(route.revision),
        "upstream": upstream_name(route.service),
        "servers": [upstream_address(upstream) for upstream in route.upstreams],
        "port": route.port,
        "path": route.path,
        "prefix": (route.path or "/").rstrip("/"),
        "strip_prefix": route.strip_prefix,
    }
