"""Settings: built-in defaults < ``deployer.toml`` < ``DEPLOYER_*`` environment.

Read once, at start, by the composition root; nothing else reads the
environment. pydantic-settings lays ``DEPLOYER_SECTION__KEY`` variables (and a
few short forms such as ``DEPLOYER_DATABASE_URL``) over the toml. Secrets come
only from files or the environment and are held as ``SecretStr``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from deployer.errors import ConfigError

ENV_PREFIX = "DEPLOYER_"

# Short environment names -> their DEPLOYER_SECTION__KEY spelling.
SHORT_FORMS: dict[str, str] = {
    "DEPLOYER_DATABASE_URL": "DEPLOYER_DATABASE__URL",
    "DEPLOYER_STATE_DIR": "DEPLOYER_PATHS__STATE_DIR",
    "DEPLOYER_WEBHOOK_SECRET": "DEPLOYER_GITEA__WEBHOOK_SECRET",
    "DEPLOYER_WEBHOOK_SECRET_FILE": "DEPLOYER_GITEA__WEBHOOK_SECRET_FILE",
    "DEPLOYER_GITEA_URL": "DEPLOYER_GITEA__URL",
    "DEPLOYER_GITEA_TOKEN": "DEPLOYER_GITEA__TOKEN",
    "DEPLOYER_GITEA_TOKEN_FILE": "DEPLOYER_GITEA__TOKEN_FILE",
    "DEPLOYER_API_TOKEN": "DEPLOYER_API__TOKEN",
    "DEPLOYER_API_TOKEN_FILE": "DEPLOYER_API__TOKEN_FILE",
}
# Keys of the toml's top level, outside any section.
TOP_LEVEL_VARIABLES = {"DEPLOYER_RUNTIME"}
# Keys that hold a secret: allowed from the environment, never in the toml itself.
SECRET_KEYS = {("gitea", "webhook_secret"), ("gitea", "token"), ("api", "token"),
               ("artifacts", "s3_access_key"), ("artifacts", "s3_secret_key")}


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value


# An empty string in the toml or environment means "not set", not the current directory.
OptionalPath = Annotated[Path | None, BeforeValidator(_empty_is_none)]
OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_empty_is_none)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be HOST:PORT (got {value!r})")
    return value


def _port_range(value: str) -> str:
    first, sep, last = value.partition("-")
    if not sep or not first.isdigit() or not last.isdigit():
        raise ValueError(f"must be FIRST-LAST (got {value!r})")
    if not 1024 <= int(first) <= int(last) <= 65535:
        raise ValueError(f"must lie within 1024-65535 with FIRST <= LAST (got {value!r})")
    return value


def _bounds(value: str) -> tuple[int, int]:
    first, _, last = value.partition("-")
    return int(first), int(last)


HostPort = Annotated[str, AfterValidator(_host_port)]
PortRange = Annotated[str, AfterValidator(_port_range)]


class ServerSettings(Section):
    listen: HostPort = "127.0.0.1:8700"
    public_url: str = ""

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
    workers: int = Field(default=3, ge=1, le=64)  # sources reconciled at once (a waiting gate holds one)
    parallel: int = Field(default=4, ge=1, le=64)  # services of one source deployed at once
    builds: int = Field(default=2, ge=1, le=32)  # environment and image builds at once, all sources


class PortSettings(Section):
    range: PortRange = "8800-8999"
    slot_range: PortRange = "9800-9999"  # blue/green slots, when the gateway is on
    reuse_grace: float = Field(default=600, ge=0)

    @property
    def bounds(self) -> tuple[int, int]:
        return _bounds(self.range)

    @property
    def slot_bounds(self) -> tuple[int, int]:
        return _bounds(self.slot_range)


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
    listen: HostPort = "127.0.0.1:8080"
    drain: float = Field(default=10, ge=0, le=3600)  # seconds old workers / the old slot keep serving
    nginx: str = Field(default="nginx", min_length=1)  # the binary: a path, or a name looked up on PATH
    conf_path: OptionalPath = None  # external mode: the file the operator's nginx includes in http {}
    reload_command: str = ""  # external mode, e.g. "systemctl reload nginx"
    test_command: str = ""  # external mode; "" = "nginx -t -q" (the operator's default config)

    @model_validator(mode="after")
    def _external_needs_reload(self) -> GatewaySettings:
        if self.conf_path is not None and not self.reload_command.strip():
            raise ValueError("conf_path (external mode) needs reload_command, e.g. \"systemctl reload nginx\"")
        return self

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


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


class ArtifactSettings(Section):
    """Files fetched by digest (``artifacts:`` in service.yaml): the cache's budget and where S3 is."""

    cache_max: int = Field(default=20 * 1000**3, gt=0)  # bytes kept under <state>/artifacts before pruning
    parallel: int = Field(default=4, ge=1, le=64)  # transfers at once, all services
    timeout: float = Field(default=30, gt=0)  # seconds without a byte before a transfer fails
    s3_endpoint: str = ""  # e.g. http://127.0.0.1:9000 for MinIO; "" = AWS
    s3_region: str = "us-east-1"
    s3_access_key: OptionalSecret = None
    s3_access_key_file: OptionalPath = None
    s3_secret_key: OptionalSecret = None
    s3_secret_key_file: OptionalPath = None
    ca_bundle: OptionalPath = None  # PEM file of the CAs trusted for https:// artifacts and the S3 endpoint


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_nested_max_split=1,  # DEPLOYER_SERVER__LISTEN__X is the unknown key listen__x, not a deeper level
        extra="forbid",
    )

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
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    runtime: Literal["supervisor", "docker", "swarm"] = "supervisor"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Built directly, ``Settings(...)`` holds just the values given: only ``load_settings`` reads the world."""
        return (init_settings,)

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.paths.state_dir = self.paths.state_dir.expanduser().absolute()
        return self

    @model_validator(mode="after")
    def _gateway_ports_apart(self) -> Settings:
        """With the gateway on, its port, the services' ports and the slots' ports never meet.

        Checked only then, so a config that never turns the gateway on keeps working as it did.
        """
        if not self.gateway.enabled:
            return self
        (first, last), (slot_first, slot_last) = self.ports.bounds, self.ports.slot_bounds
        if slot_first <= last and first <= slot_last:
            raise ValueError(f"[ports] slot_range {self.ports.slot_range} overlaps [ports] range {self.ports.range};"
                             " they must not share a port")
        port = self.gateway.port
        for key, (low, high) in (("range", (first, last)), ("slot_range", (slot_first, slot_last))):
            if low <= port <= high:
                raise ValueError(f"[gateway] listen: port {port} lies inside [ports] {key} ({low}-{high}); "
                                 "choose a port outside both port ranges")
        if port == self.server.port:
            raise ValueError(f"[gateway] listen: port {port} is [server] listen's port")
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
    def s3_keys(self) -> tuple[str | None, str | None]:
        """The S3 access key and secret key, from the environment or their files (never the toml)."""
        options = self.artifacts
        return (_secret(options.s3_access_key, options.s3_access_key_file, "artifacts.s3_access_key_file"),
                _secret(options.s3_secret_key, options.s3_secret_key_file, "artifacts.s3_secret_key_file"))

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


SECTIONS = frozenset(
    name for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
)


class _Environment(EnvSettingsSource):
    """``DEPLOYER_SECTION__KEY`` variables taken from the mapping given, so callers and tests choose the environment."""

    def __init__(self, settings_cls: type[BaseSettings], variables: Mapping[str, str]) -> None:
        self._variables = variables
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # pydantic-settings' own seam for where variables come from (its .env source replaces it the same way).
        return {name.lower(): value for name, value in self._variables.items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        """A list that is not JSON goes on as text, so validation names the key as it would for the toml."""
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return value


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the toml at ``path`` (if any), then the environment."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = _read_toml(path) if path is not None else {}
    _check_toml(data, path)
    variables = _setting_variables(environ)
    _check_sections(variables)
    values = {spelled: environ[name] for name, spelled in variables.items()}
    # The first source wins where both set a key; DefaultSettingsSource is not needed, the models hold the defaults.
    sources = (_Environment(Settings, values), InitSettingsSource(Settings, init_kwargs=data))
    try:
        return Settings(_build_sources=(sources, {}))
    except SettingsError as exc:
        raise ConfigError(f"environment: {exc}") from None
    except ValidationError as exc:
        origins = {_key_path(spelled): name for name, spelled in variables.items()}
        raise ConfigError(_first_problem(exc, path, origins)) from None


def default_config_path(environ: Mapping[str, str] | None = None) -> Path | None:
    environ = os.environ if environ is None else environ
    if environ.get("DEPLOYER_CONFIG"):
        return Path(environ["DEPLOYER_CONFIG"])
    candidate = Path("deployer.toml")
    return candidate if candidate.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    # Read here rather than by pydantic-settings' TomlConfigSettingsSource, which skips a missing file
    # silently (a mistyped --config would run on defaults) and lets tomllib's exception through.
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _check_toml(data: dict[str, Any], path: Path | None) -> None:
    # A section set to a plain value would be replaced, unreported, by any DEPLOYER_SECTION__KEY variable.
    for name in SECTIONS & data.keys():
        if not isinstance(data[name], dict):
            raise ConfigError(f"{path}: {name}: must be a [{name}] table")
    for (section, key) in SECRET_KEYS:
        if key in data.get(section, {}):
            raise ConfigError(
                f"{path}: [{section}] {key}: secrets are not read from the toml; "
                f"set {key}_file or the environment variable instead"
            )


def _setting_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """Each ``DEPLOYER_*`` variable that is a setting -> its ``DEPLOYER_SECTION__KEY`` spelling.

    Short forms come first, so the long spelling wins when both are set. Other
    names (``DEPLOYER_CONFIG``, the hooks' ``DEPLOYER_SERVICE`` ...) are not settings.
    """
    short = {name: SHORT_FORMS[name] for name in environ if name in SHORT_FORMS}
    spelled = {name: name for name in environ
               if name in TOP_LEVEL_VARIABLES or (name.startswith(ENV_PREFIX) and "__" in name)}
    return short | spelled


def _key_path(spelled: str) -> tuple[str, ...]:
    """``DEPLOYER_SERVER__LISTEN`` -> ``("server", "listen")``, as pydantic locates the value."""
    return tuple(spelled[len(ENV_PREFIX):].lower().split("__", 1))


def _check_sections(variables: Mapping[str, str]) -> None:
    # pydantic-settings reads only the sections it knows; a variable naming another would pass unnoticed.
    for name, spelled in variables.items():
        path = _key_path(spelled)
        if len(path) > 1 and path[0] not in SECTIONS:
            raise ConfigError(f"{name}: [{path[0]}] is not a section of deployer.toml")


def _first_problem(exc: ValidationError, path: Path | None, origins: Mapping[tuple[str, ...], str]) -> str:
    """One line: where the value came from (variable or file), its key, what is wrong with it."""
    error = exc.errors()[0]
    loc = tuple(str(part) for part in error["loc"])
    where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else (_section_or_key(loc[0]) if loc else "")
    variable = origins.get(loc[:2])
    origin = f"{variable}: " if variable else f"{path}: " if path else ""
    unknown = error["type"] == "extra_forbidden"
    message = "unknown key" if unknown else error["msg"].replace("Value error, ", "")
    value = error.get("input")
    # An unknown key may be a mistyped secret, so its value is never shown either.
    hidden = unknown or "(got" in message or "secret" in where or "token" in where
    shown = "" if hidden or value is None or isinstance(value, dict | list) else f" (got {value!r})"
    hint = '; write it as JSON, e.g. ["acme"]' if variable and error["type"] == "list_type" else ""
    # A check across sections (no single key) names its keys in the message itself.
    return f"{origin}{where + ': ' if where else ''}{message}{shown}{hint}"


def _section_or_key(name: str) -> str:
    """A check of a whole section is located at ``[section]``; a top-level key by its name."""
    return f"[{name}]" if name in SECTIONS else name
