"""The shape of ``service.yaml``: one service at top level, or ``services:`` (a monorepo).

Validation lives here (pydantic, unknown keys forbidden); locating errors in
the YAML text is the loader's job. The configured port range arrives through
the validation context as ``{"port_range": (first, last)}``.
"""

from __future__ import annotations

import math
import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,39}$"
# What a runtime may call an instance: a service name, or NAME--blue / NAME--green (its slots).
INSTANCE_PATTERN = r"^[a-z][a-z0-9-]{0,47}$"
ENV_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
RUNTIMES = ("supervisor", "docker", "swarm")
RuntimeName = Literal["supervisor", "docker", "swarm"]
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _relative_path(value: str) -> str:
    """A path inside the repository: relative, no ``..``, no control characters."""
    if not value or _CONTROL.search(value):
        raise ValueError("must be a non-empty path without control characters")
    pure = PurePosixPath(value)
    if pure.is_absolute() or value.startswith("\\"):
        raise ValueError(f"must be relative to the repository root (got {value!r})")
    if ".." in pure.parts:
        raise ValueError(f"must stay inside the repository, '..' is not allowed (got {value!r})")
    return str(pure)


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (newline, carriage return, NUL ...)")
    return value


def _scalar_to_str(value: Any) -> Any:
    """YAML turns ``5`` and ``true`` into numbers and booleans; environment values are text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


RelPath = Annotated[str, AfterValidator(_relative_path)]
EnvValue = Annotated[str, BeforeValidator(_scalar_to_str), AfterValidator(_no_control)]
EnvKey = Annotated[str, Field(pattern=ENV_KEY_PATTERN)]
UrlPath = Annotated[str, Field(pattern=r"^/[A-Za-z0-9._~/%-]*$", max_length=200)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthSpec(Strict):
    path: UrlPath = "/health"
    timeout: float = Field(default=60, gt=0, le=3600, description="seconds until healthy, else the attempt fails")
    interval: float = Field(default=0.25, gt=0, le=60, description="seconds between health probes")


class InfoSpec(Strict):
    path: UrlPath = "/info"
    expect: dict[str, Any] = Field(default_factory=dict)


# RFC 9110 token characters: what a header name may hold.
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$"
# Set by the HTTP client for the request it sends: a demo always goes to the service's own address.
_FIXED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
DEMO_PATH_PATTERN = r"^/[A-Za-z0-9._~/%@!$&'()*+,;=:-]*(\?[A-Za-z0-9._~/%@!$&'()*+,;=:?-]*)?$"
JSON_PATH_PATTERN = r"^[^.\s]+(\.[^.\s]+)*$"
DEMO_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
RANGE_KEYS = frozenset({"min", "max"})


def _demo_path(value: str) -> str:
    """A path on the service's own address: never another host ('//'), never a '..' segment."""
    path = value.split("?", 1)[0]
    if path.startswith("//"):
        raise ValueError(f"must be a path on the service itself, not '//host' (got {value!r})")
    if any(segment in (".", "..") for segment in unquote(path).split("/")):
        raise ValueError(f"must not hold '.' or '..' segments (got {value!r})")
    return value


def _range_or_value(value: Any) -> Any:
    """``{min: 0.5, max: 1}`` is a range and needs numbers; anything else is compared as it is."""
    if isinstance(value, dict) and value and set(value) <= RANGE_KEYS:
        for key, bound in value.items():
            if isinstance(bound, bool) or not isinstance(bound, int | float) or not math.isfinite(bound):
                raise ValueError(f"{key} must be a number (a range is {{min: N, max: N}})")
        if "min" in value and "max" in value and value["min"] > value["max"]:
            raise ValueError(f"min must not be more than max (got {value['min']} and {value['max']})")
    return value


class SecretRef(Strict):
    """A value kept in the daemon's secret store: ``{secret: API_KEY}``."""

    secret: Annotated[str, Field(pattern=ENV_KEY_PATTERN)]


def _header_kind(value: Any) -> str:
    return "secret" if isinstance(value, dict | SecretRef) else "text"


HeaderText = Annotated[str, BeforeValidator(_scalar_to_str), AfterValidator(_no_control), Field(max_length=8192)]
# Chosen by shape: a mapping is a secret reference, anything else literal text (errors name one kind only).
HeaderValue = Annotated[Annotated[HeaderText, Tag("text")] | Annotated[SecretRef, Tag("secret")],
                        Discriminator(_header_kind)]
HeaderName = Annotated[str, Field(pattern=HEADER_NAME_PATTERN)]
JsonExpectation = Annotated[Any, AfterValidator(_range_or_value)]


class DemoSpec(Strict):
    """One demo: a request to the service's own address and what its answer must be.

    Fields added after revisions were first recorded are left out of the stored spec while they
    hold their defaults, so an upgrade of deployer changes no spec hash.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    path: Annotated[str, Field(pattern=DEMO_PATH_PATTERN, max_length=500), AfterValidator(_demo_path)] = Field(
        default="/predict", description="path (and query) on the service's own address; default /predict")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[HeaderName, HeaderValue] = Field(
        default_factory=dict, description="request headers; a value may be {secret: NAME} (masked everywhere)")
    input: RelPath | None = None
    file: RelPath | None = None
    status: int = Field(default=200, ge=100, le=599)
    json_keys: list[str] = Field(default_factory=list)
    expect_json: dict[Annotated[str, Field(pattern=JSON_PATH_PATTERN)], JsonExpectation] = Field(
        default_factory=dict, alias="json",
        description="values the JSON answer must hold at dotted paths ('label', 'scores.0'); a value "
                    "{min: N, max: N} is a numeric range, anything else must be equal")
    max_latency_ms: float | None = Field(default=None, gt=0)

    @field_validator("headers")
    @classmethod
    def _headers_allowed(cls, value: dict[str, Any]) -> dict[str, Any]:
        fixed = sorted(name for name in value if name.lower() in _FIXED_HEADERS)
        if fixed:
            raise ValueError(f"{', '.join(fixed)} is set by deployer (a demo always goes to the service itself)")
        lowered = [name.lower() for name in value]
        twice = sorted({name for name in value if lowered.count(name.lower()) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)}: header names are case-insensitive; give each once")
        return value

    @model_validator(mode="after")
    def _one_input(self) -> DemoSpec:
        if self.input is not None and self.file is not None:
            raise ValueError("give only one of 'input' (a JSON file) or 'file' (sent as multipart)")
        if self.method in _BODY_METHODS and self.input is None and self.file is None:
            raise ValueError("give exactly one of 'input' (a JSON file) or 'file' (sent as multipart)")
        return self

    @model_serializer(mode="wrap")
    def _without_new_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key, default in _DEMO_DEFAULTS.items():
            if key in data and data[key] == default:
                del data[key]
        return data

    def secret_names(self) -> list[str]:
        return [value.secret for value in self.headers.values() if isinstance(value, SecretRef)]


_DEMO_DEFAULTS: dict[str, Any] = {"path": "/predict", "method": "POST", "headers": {}, "json": {}}


class GatewaySpec(Strict):
    path: UrlPath = Field(description="prefix served on the gateway's listener; starts and ends with '/'")
    strip_prefix: bool = Field(default=True, description="proxy /ai/x/foo as /foo (true) or keep the prefix")


def _gateway_path(spec: GatewaySpec | None) -> GatewaySpec | None:
    """A service's gateway path: a folder-like prefix nginx can match (checked on manifests only).

    Kept off ``GatewaySpec`` itself so specs already stored in revisions stay readable.
    """
    if spec is None:
        return spec
    path = spec.path
    if not (path.startswith("/") and path.endswith("/")):
        raise ValueError(f"path must start and end with '/', e.g. /ai/text-classify/ (got {path!r})")
    if "//" in path or "/./" in path or "/../" in path:
        raise ValueError(f"path must not hold empty, '.' or '..' segments (got {path!r})")
    if path.startswith("/.deployer/"):
        raise ValueError(f"path /.deployer/ is reserved for the gateway itself (got {path!r})")
    return spec


class RolloutSpec(Strict):
    strategy: Literal["blue-green", "recreate"] = Field(
        description="behind the gateway: blue-green starts the new revision beside the old one and switches when "
                    "it passed its gate (no failed request); recreate stops the old one first (a model that fits "
                    "the GPU only once). Without the gateway every service is recreated.")


class ResourcesSpec(Strict):
    memory: Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?[kmgKMG]?$")] | None = None
    cpus: float | None = Field(default=None, gt=0, le=1024)
    gpus: int = Field(default=0, ge=0, le=64)


# Swarm's own placement syntax, narrowed to what a service needs: spread over a node attribute;
# constraints "ATTRIBUTE==VALUE" or "ATTRIBUTE!=VALUE" (node.role==worker, node.labels.zone!=b).
_NODE_ATTRIBUTE = r"(node\.(id|hostname|role|platform\.os|platform\.arch)|(node|engine)\.labels\.[A-Za-z0-9_.-]{1,64})"
SPREAD_PATTERN = rf"^{_NODE_ATTRIBUTE}$"
CONSTRAINT_PATTERN = rf"^{_NODE_ATTRIBUTE} ?(==|!=) ?[A-Za-z0-9_.:/-]{{1,128}}$"


class PlacementSpec(Strict):
    """Where swarm places a service's tasks (``runtime: swarm`` only)."""

    spread: Annotated[str, Field(pattern=SPREAD_PATTERN)] = Field(
        default="node.id", description="spread the tasks evenly over the values of this node attribute "
                                       "(node.id: one per node; node.labels.zone: over zones)")
    constraints: list[Annotated[str, Field(pattern=CONSTRAINT_PATTERN)]] = Field(
        default_factory=list, max_length=16,
        description="nodes a task may run on, swarm's syntax: node.role==worker, node.labels.gpu==true")


class HooksSpec(Strict):
    pre_deploy: RelPath | None = None
    post_deploy: RelPath | None = None


class DockerSpec(Strict):
    dockerfile: RelPath | None = None
    build_args: dict[EnvKey, EnvValue] = Field(default_factory=dict)


class FileSpec(Strict):
    """A file deployer puts in the service folder before start: a secret's content or a repository file.

    ``path`` is relative to the service folder; ``from`` too. Written with mode 0600.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)

    path: RelPath = Field(description="where the file goes, relative to the service folder")
    secret: Annotated[str, Field(pattern=ENV_KEY_PATTERN)] | None = Field(
        default=None, description="the file's content is this secret's value, byte for byte")
    from_: RelPath | None = Field(default=None, alias="from",
                                  description="the file's content is this repository file (relative to the "
                                              "service folder)")

    @model_validator(mode="after")
    def _one_content(self) -> FileSpec:
        if (self.secret is None) == (self.from_ is None):
            raise ValueError("give exactly one of 'secret' (a secret's value) or 'from' (a repository file)")
        return self


ARTIFACT_SCHEMES = ("s3", "http", "https")
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# Query parameters that carry a credential: a signed URL (S3's, GCS's, Azure's SAS), a token, a key.
_SECRET_QUERY = re.compile(r"signature|credential|token|secret|passw|api[_-]?key|access[_-]?key|^sig$|^key$",
                           re.IGNORECASE)


def _artifact_url(value: str) -> str:
    """Where an artifact is fetched: s3://bucket/key or http(s)://host/path, never with a credential in it.

    Keys and tokens belong in deployer.toml's [artifacts] (read from secret files): a URL is stored
    in revisions and shown on pages, and a signed URL expires before the next rollback needs it.
    """
    if _CONTROL.search(value) or " " in value:
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ValueError(f"is not a well-formed URL (got {value[:80]!r})") from None
    if parts.scheme.lower() not in ARTIFACT_SCHEMES:
        raise ValueError(f"scheme {parts.scheme or '(none)'!r} is not supported; use s3://BUCKET/KEY, "
                         "http:// or https://")
    if "@" in parts.netloc:
        raise ValueError("carries credentials (user:password@host); keys belong in deployer.toml [artifacts] "
                         "(s3_access_key_file, s3_secret_key_file), never in service.yaml")
    secret = sorted({name for name, _ in parse_qsl(parts.query, keep_blank_values=True) if _SECRET_QUERY.search(name)})
    if secret:
        raise ValueError(f"query parameter {', '.join(secret)} looks like a credential (a signed or token URL); "
                         "give the plain URL and keep keys in deployer.toml [artifacts]")
    if not parts.hostname or parts.path in ("", "/"):
        what = "s3://BUCKET/KEY" if parts.scheme.lower() == "s3" else "a host and a file path"
        raise ValueError(f"must name {what} (got {value[:80]!r})")
    return value


def _file_path(value: str) -> str:
    if PurePosixPath(value) == PurePosixPath(".") or value.endswith("/"):
        raise ValueError(f"must name a file, not a folder (got {value!r})")
    return value


class ArtifactSpec(Strict):
    """A file fetched by digest before the new revision starts: model weights kept out of git."""

    url: Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_artifact_url)] = Field(
        description="s3://BUCKET/KEY (endpoint and keys from deployer.toml [artifacts]), http:// or https://")
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)] = Field(
        description="the file's sha256 as sha256sum prints it (64 lowercase hex digits); other bytes fail the "
                    "attempt")
    path: Annotated[RelPath, AfterValidator(_file_path)] = Field(
        description="where the file goes, relative to the service folder (read-only)")


class ServiceManifest(Strict):
    """One service as written in ``service.yaml``."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, description="unique across all sources")]
    path: RelPath = "."
    runtime: RuntimeName | None = None
    command: Annotated[str, AfterValidator(_no_control), Field(min_length=1, max_length=4096)] | None = None
    requirements: RelPath | None = None
    port: Literal["auto"] | int = "auto"
    env: dict[EnvKey, EnvValue] = Field(default_factory=dict)
    secrets: list[EnvKey] = Field(default_factory=list)
    health: HealthSpec = Field(default_factory=HealthSpec)
    info: InfoSpec = Field(default_factory=InfoSpec)
    group: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    demo: list[DemoSpec] = Field(default_factory=list)
    gateway: Annotated[GatewaySpec | None, AfterValidator(_gateway_path)] = None
    rollout: RolloutSpec | None = Field(
        default=None, description="How a new revision replaces the running one; default: blue-green when "
                                  "the gateway is on, recreate otherwise.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    replicas: int = Field(default=1, ge=1, le=100)
    placement: PlacementSpec | None = Field(
        default=None, description="runtime swarm: spread preference and node constraints of the tasks; "
                                  "default: spread over node.id, no constraint")
    hooks: HooksSpec = Field(default_factory=HooksSpec)
    docker: DockerSpec = Field(default_factory=DockerSpec)
    files: list[FileSpec] = Field(default_factory=list)
    artifacts: list[ArtifactSpec] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _not_a_slot_name(cls, value: str) -> str:
        if value.endswith(("--blue", "--green")):
            raise ValueError("must not end in --blue or --green (the names of a service's slots behind the gateway)")
        return value

    @field_validator("port")
    @classmethod
    def _port_in_range(cls, value: Literal["auto"] | int, info: ValidationInfo) -> Literal["auto"] | int:
        if value == "auto":
            return value
        first, last = (info.context or {}).get("port_range", (1024, 65535))
        if not first <= value <= last:
            raise ValueError(f"must be between {first} and {last} (got {value})")
        return value

    @field_validator("env")
    @classmethod
    def _env_not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = sorted({"PORT", "HOST"} & set(value))
        if reserved:
            raise ValueError(f"{', '.join(reserved)} is set by deployer and cannot be overridden")
        return value


    @field_validator("placement")
    @classmethod
    def _placement_is_swarm(cls, value: PlacementSpec | None, info: ValidationInfo) -> PlacementSpec | None:
        runtime = info.data.get("runtime")
        if value is not None and runtime not in (None, "swarm"):
            raise ValueError(f"placement applies to runtime swarm only (this service's runtime is {runtime})")
        return value

    @field_validator("files")
    @classmethod
    def _files_apart(cls, files: list[FileSpec], info: ValidationInfo) -> list[FileSpec]:
        """A ``files:`` path never replaces a file deployer itself reads (that would run or show its content)."""
        targets = [entry.path for entry in files]
        twice = sorted({path for path in targets if targets.count(path) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} is given twice")
        read = {path: why for why, path in _read_paths(info.data)}
        for entry in files:
            if entry.path in read:
                raise ValueError(f"{entry.path} is the {read[entry.path]}; a file of 'files:' must not replace it")
            if entry.from_ in targets:
                raise ValueError(f"{entry.path} is made from {entry.from_}, which 'files:' writes itself")
        return files

    @field_validator("artifacts")
    @classmethod
    def _artifacts_apart(cls, artifacts: list[ArtifactSpec], info: ValidationInfo) -> list[ArtifactSpec]:
        """One file per path, never a file deployer reads itself nor one ``files:`` writes."""
        targets = [str(PurePosixPath(entry.path)) for entry in artifacts]
        twice = sorted({path for path in targets if targets.count(path) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} is given twice")
        read = {path: why for why, path in _read_paths(info.data)}
        written = info.data.get("files", [])
        read.update({str(PurePosixPath(entry.path)): "target of a 'files:' entry" for entry in written})
        for path in targets:
            if path in read:
                raise ValueError(f"{path} is the {read[path]}; an artifact must not replace it")
        return artifacts


def _read_paths(fields: dict[str, Any]) -> list[tuple[str, str]]:
    """Files deployer reads from a service folder, and what each one is (from the fields validated so far)."""
    hooks, docker = fields.get("hooks", HooksSpec()), fields.get("docker", DockerSpec())
    paths = [("requirements file", fields.get("requirements")), ("requirements file", "requirements.txt"),
             ("requirements file", "pyproject.toml"), ("lock file", "uv.lock"), ("lock file", "poetry.lock"),
             ("Python version file", ".python-version"), ("pre_deploy hook", hooks.pre_deploy),
             ("post_deploy hook", hooks.post_deploy), ("Dockerfile", docker.dockerfile or "Dockerfile")]
    paths += [(f"input of demo {demo.name}", demo.input or demo.file) for demo in fields.get("demo", [])]
    if PurePosixPath(fields.get("path", ".")) == PurePosixPath("."):
        paths.append(("manifest", "service.yaml"))
    return [(why, str(PurePosixPath(path))) for why, path in paths if path]


class ManifestFile(Strict):
    """The whole file, normalised to a list of services."""

    services: list[ServiceManifest] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> ManifestFile:
        seen: set[str] = set()
        for service in self.services:
            if service.name in seen:
                raise ValueError(f"service name {service.name!r} is used twice")
            seen.add(service.name)
        return self
