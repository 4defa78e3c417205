"""Settings: built-in defaults < ``deployer.toml`` < ``DEPLOYER_*`` environment.

Read once, at start, by the composition root; nothing else reads the
environment. Any ``[section] key`` can be set as ``DEPLOYER_SECTION__KEY``;
a few short forms (``DEPLOYER_DATABASE_URL`` ...) are accepted too. Secrets
come only from files or the environment and are held as ``SecretStr``.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from deployer.errors import ConfigError

ENV_PREFIX = "DEPLOYER_"

# Short environment names -> (section, key).
SHORT_FORMS: dict[str, tuple[str, str]] = {
    "DEPLOYER_DATABASE_URL": ("database", "url"),
    "DEPLOYER_STATE_DIR": ("paths", "state_dir"),
    "DEPLOYER_WEBHOOK_SECRET": ("gitea", "webhook_secret"),
    "DEPLOYER_WEBHOOK_SECRET_FILE": ("gitea", "webhook_secret_file"),
    "DEPLOYER_GITEA_URL": ("gitea", "url"),
    "DEPLOYER_GITEA_TOKEN": ("gitea", "token"),
    "DEPLOYER_GITEA_TOKEN_FILE": ("gitea", "token_file"),
    "DEPLOYER_API_TOKEN": ("api", "token"),
    "DEPLOYER_API_TOKEN_FILE": ("api", "token_file"),
}
# Keys that hold a secret: allowed from the environment, never in the toml itself.
SECRET_KEYS = {("gitea", "webhook_secret"), ("gitea", "token"), ("api", "token")}
NOT_FROM_ENV = {"DEPLOYER_CONFIG"}


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value


# An empty string in the toml or environment means "not set", not the current directory.
OptionalPath = Annotated[Path | None, BeforeValidator(_empty_is_none)]
OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_empty_is_none)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(Section):
    listen: str = "127.0.0.1:8700"
    public_url: str = ""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"must be HOST:PORT (got {value!r})")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class DatabaseSettings(Section):
    url: str = ""


class GiteaSettings(Section):
    url: str = ""
    clone_base: str = ""
    token: OptionalSecret = None
    token_file: OptionalPath = None
    webhook_secret: OptionalSecret = None
    webhook_secret_file: OptionalPath = None
    allowed_owners: list[str] = Field(default_factory=list)
    repo_prefix: str = ""
    branch: str = "main"
    status_context: str = "deployer"


class SourceSettings(Section):
    url: str
    branch: str = "main"
    name: str | None = None


class ReconcileSettings(Section):
    interval: float = Field(default=10, gt=0)
    poll_interval: float = Field(default=60, gt=0)
    prune: bool = True
    allow_empty: bool = False
    workers: int = Field(default=2, ge=1, le=32)


class PortSettings(Section):
    range: str = "8800-8999"
    reuse_grace: float = Field(default=600, ge=0)

    @field_validator("range")
    @classmethod
    def _range(cls, value: str) -> str:
        first, sep, last = value.partition("-")
        if not sep or not first.isdigit() or not last.isdigit():
            raise ValueError(f"must be FIRST-LAST (got {value!r})")
        if not 1024 <= int(first) <= int(last) <= 65535:
            raise ValueError(f"must lie within 1024-65535 with FIRST <= LAST (got {value!r})")
        return value

    @property
    def bounds(self) -> tuple[int, int]:
        first, _, last = self.range.partition("-")
        return int(first), int(last)


class SupervisorSettings(Section):
    socket: str = "embedded"
    include_dir: OptionalPath = None
    user: str = ""


class DockerSettings(Section):
    enabled: bool | Literal["auto"] = "auto"
    url: str = ""
    base_image: str = "python:3.11-slim"
    bind_address: str = "127.0.0.1"
    registry: str = ""
    keep_images: int = Field(default=3, ge=1)


class GatewaySettings(Section):
    enabled: bool = False


class ApiSettings(Section):
    token: OptionalSecret = None
    token_file: OptionalPath = None


class PathSettings(Section):
    state_dir: Path = Path("state")
    templates: OptionalPath = None
    secrets_dir: OptionalPath = None


class HookSettings(Section):
    dir: OptionalPath = None
    timeout: float = Field(default=300, gt=0)


class DemoSettings(Section):
    max_input_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_response_bytes: int = Field(default=256 * 1024, gt=0)
    timeout: float = Field(default=30, gt=0)


class BuildSettings(Section):
    installer: Literal["auto", "uv", "pip"] = "auto"
    python: str = ""
    timeout: float = Field(default=900, gt=0)


class Settings(Section):
    server: ServerSettings = Field(default_factory=ServerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    gitea: GiteaSettings = Field(default_factory=GiteaSettings)
    sources: list[SourceSettings] = Field(default_factory=list)
    reconcile: ReconcileSettings = Field(default_factory=ReconcileSettings)
    ports: PortSettings = Field(default_factory=PortSettings)
    supervisor: SupervisorSettings = Field(default_factory=SupervisorSettings)
    docker: DockerSettings = Field(default_factory=DockerSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    paths: PathSettings = Field(default_factory=PathSettings)
    build: BuildSettings = Field(default_factory=BuildSettings)
    demo: DemoSettings = Field(default_factory=DemoSettings)
    hooks: HookSettings = Field(default_factory=HookSettings)
    runtime: Literal["supervisor", "docker", "swarm"] = "supervisor"

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.paths.state_dir = self.paths.state_dir.expanduser().absolute()
        return self

    # Derived values, so callers never rebuild them.
    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.paths.state_dir / 'deployer.db'}"

    @property
    def webhook_secret(self) -> str | None:
        return _secret(self.gitea.webhook_secret, self.gitea.webhook_secret_file, "gitea.webhook_secret_file")

    @property
    def gitea_token(self) -> str | None:
        return _secret(self.gitea.token, self.gitea.token_file, "gitea.token_file")

    @property
    def api_token(self) -> str | None:
        return _secret(self.api.token, self.api.token_file, "api.token_file")

    @property
    def secrets_dir(self) -> Path:
        return self.paths.secrets_dir or self.paths.state_dir / "secrets"


def _secret(value: SecretStr | None, path: Path | None, key: str) -> str | None:
    if value is not None and value.get_secret_value():
        return value.get_secret_value()
    if path is None:
        return None
    try:
        text = path.expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    return text or None


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the toml at ``path`` (if any), then the environment."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = _read_toml(path) if path is not None else {}
    for (section, key) in SECRET_KEYS:
        if key in data.get(section, {}):
            raise ConfigError(
                f"{path}: [{section}] {key}: secrets are not read from the toml; "
                f"set {key}_file or the environment variable instead"
            )
    _overlay_environment(data, environ)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_first_problem(exc, path)) from None


def default_config_path(environ: Mapping[str, str] | None = None) -> Path | None:
    environ = os.environ if environ is None else environ
    if environ.get("DEPLOYER_CONFIG"):
        return Path(environ["DEPLOYER_CONFIG"])
    candidate = Path("deployer.toml")
    return candidate if candidate.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _overlay_environment(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in NOT_FROM_ENV:
            continue
        if name in SHORT_FORMS:
            section, key = SHORT_FORMS[name]
        elif "__" in name:
            section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        else:
            continue  # DEPLOYER_SOMETHING without a section: not ours to judge
        if section == "runtime" and not key:
            data["runtime"] = raw
            continue
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{name}: [{section}] is not a section")
        target[key] = _env_value(raw)


def _env_value(raw: str) -> Any:
    """Lists and tables arrive as JSON (``["acme"]``); everything else as text for pydantic to coerce."""
    if raw[:1] in "[{":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _first_problem(exc: ValidationError, path: Path | None) -> str:
    error = exc.errors()[0]
    loc = error["loc"]
    where = f"[{loc[0]}] {'.'.join(str(part) for part in loc[1:])}" if len(loc) > 1 else str(loc[0] if loc else "")
    message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
    origin = f"{path}: " if path else ""
    value = error.get("input")
    hidden = "(got" in message or "secret" in where or "token" in where
    shown = "" if hidden or value is None or isinstance(value, dict | list) else f" (got {value!r})"
    return f"{origin}{where}: {message}{shown}".replace("Value error, ", "")
