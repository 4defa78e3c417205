"""Read ``service.yaml`` into a ``ManifestFile``, with errors that point into the file.

YAML is parsed with ruamel.yaml (pure Python, for line and column marks), then
validated by the pydantic model; every problem becomes one line
``service.yaml:12:5: services[0].port: must be between 8800 and 8999 (got 80)``.
"""

from __future__ import annotations

import difflib
import json
import re
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn, Union, get_args, get_origin

from pydantic import BaseModel, Tag, ValidationError
from pydantic.json_schema import models_json_schema
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    NodeEvent,
)
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from deployer.errors import ManifestError
from deployer.model.manifest import (
    DEMO_PATH_PATTERN,
    ENV_KEY_PATTERN,
    HEADER_NAME_PATTERN,
    JSON_PATH_PATTERN,
    NAME_PATTERN,
    SHA256_PATTERN,
    ManifestFile,
    ServiceManifest,
)
from deployer.safety import UnsafePath, is_contained, read_inside

MAX_BYTES = 256 * 1024
MAX_DEPTH = 32  # deeper nesting is never a real manifest, and the composer recurses per level
DEFAULT_PORT_RANGE = (1024, 65535)

Loc = tuple[str | int, ...]
Mark = tuple[int, int]  # 1-based line and column

_YAML_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = frozenset(_YAML_TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq"))
_SERVICE_PREFIX: Loc = ("services", 0)

# Pattern errors explain the rule in words; the regex is still shown for the exact truth.
_PATTERN_RULES = {
    NAME_PATTERN: "a lowercase letter, then up to 39 lowercase letters, digits or '-'",
    ENV_KEY_PATTERN: "a letter or '_', then letters, digits or '_'",
    r"^/[A-Za-z0-9._~/%-]*$": "a URL path starting with '/' (letters, digits and ._~/%-)",
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$": "a letter or digit, then up to 63 letters, digits or ._-",
    r"^[0-9]+(\.[0-9]+)?[kmgKMG]?$": "a size such as 512m or 2g",
    HEADER_NAME_PATTERN: "a header name (letters, digits and !#$%&'*+.^_`|~-)",
    DEMO_PATH_PATTERN: "a path on the service starting with '/' (an optional ?query), no scheme or host",
    JSON_PATH_PATTERN: "a dotted path such as label or scores.0 (no spaces, no empty parts)",
    SHA256_PATTERN: "the file's sha256: 64 lowercase hex digits, as sha256sum prints it",
}

# Editors show these; the model keeps only the validation rules.
_SERVICE_FIELD_HELP = {
    "name": "Service name, unique across all sources: ^[a-z][a-z0-9-]{0,39}$.",
    "path": "Folder in the repository holding the service (default '.').",
    "runtime": "supervisor, docker or swarm; default from deployer.toml.",
    "command": "Command for the supervisor runtime; ${PORT} is substituted, PORT and HOST are in the env.",
    "requirements": "requirements file or pyproject.toml, relative to the service folder.",
    "port": "'auto' (allocated from deployer.toml's range, sticky) or a fixed number inside that range.",
    "env": "Environment variables for the service (values are text; numbers and booleans are converted).",
    "secrets": "Names looked up in the daemon's secret store, never in git.",
    "health": "Health gate: path probed after start, and seconds until healthy.",
    "info": "Path of the service's info endpoint.",
    "group": "Services compared side by side.",
    "demo": "Demo requests sent to the service after the health gate (default POST /predict with a file of "
            "the service folder); the answer's status, latency, keys and values decide.",
    "gateway": "Path under which the gateway routes to the service.",
    "rollout": "How a new revision replaces the old one behind the gateway: blue-green (default) or recreate.",
    "resources": "Memory, CPU and GPU limits (docker and swarm).",
    "replicas": "Number of replicas (swarm): one task per node, so at most the ready nodes.",
    "placement": "Swarm: spread the tasks over a node attribute (default node.id) and constrain the nodes "
                 "(node.role==worker, node.labels.zone!=b).",
    "hooks": "Lifecycle hooks, relative to the service folder.",
    "docker": "Dockerfile and build arguments for the docker and swarm runtimes.",
    "files": "Files put in the service folder before start, mode 0600: a secret's value ({path: .env, secret: "
             "DOTENV}) or a repository file ({path: config/app.toml, from: conf/prod.toml}).",
    "artifacts": "Files fetched by digest before start (model weights kept out of git), placed read-only in the "
                 "service folder: {url: s3://models/bert.bin | https://..., sha256: <64 hex>, path: models/bert.bin}."
                 " Credentials come from deployer.toml [artifacts], never from the URL.",
}


@dataclass
class _Doc:
    """Plain data built from the YAML nodes, plus where each key and value starts."""

    data: Any = None
    keys: dict[Loc, Mark] = field(default_factory=dict)
    values: dict[Loc, Mark] = field(default_factory=dict)
    single: bool = False  # one service at top level: paths are shown without "services[0]."

    def value_mark(self, loc: Loc) -> Mark:
        """Where the value at ``loc`` starts, or its nearest ancestor that exists."""
        while loc not in self.values and loc:
            loc = loc[:-1]
        return self.values.get(loc, (1, 1))

    def key_mark(self, loc: Loc) -> Mark:
        """Where the key of the entry at ``loc`` is; a list item has no key, so its value."""
        return self.keys.get(loc) or self.value_mark(loc)


class _Problems:
    """Collects "file:line:col: path: message" lines, then raises them together."""

    def __init__(self, filename: str, doc: _Doc | None = None) -> None:
        self.filename = filename
        self.doc = doc
        self._items: list[tuple[Mark, str]] = []

    def add(self, mark: Mark, loc: Loc | None, message: str) -> None:
        where = _format_loc(self._user_loc(loc)) if loc is not None else ""
        text = f"{where}: {message}" if where else message
        self._items.append((mark, f"{self.filename}:{mark[0]}:{mark[1]}: {text}"))

    def _user_loc(self, loc: Loc) -> Loc:
        if self.doc is not None and self.doc.single and loc[:2] == _SERVICE_PREFIX:
            return loc[2:]
        return loc

    def __bool__(self) -> bool:
        return bool(self._items)

    def raise_if_any(self) -> None:
        if self._items:
            raise ManifestError([line for _, line in sorted(self._items, key=lambda item: item[0])])


# ---------------------------------------------------------------- public API


def load_manifest(
    text: str | bytes,
    *,
    filename: str = "service.yaml",
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
) -> ManifestFile:
    """Parse and validate one ``service.yaml``; raise ``ManifestError`` listing every problem.

    Validation is strict: YAML types are kept (``port: "8800"`` is text, not a port). A problem
    points at the offending value; an unknown key at the key itself; a missing key at its parent.
    """
    manifest, _ = _load(text, filename, port_range)
    return manifest


def load_manifest_file(
    path: Path,
    *,
    repo_root: Path | None = None,
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
) -> ManifestFile:
    """Load ``path`` and check that every folder and file it names exists inside ``repo_root``.

    ``repo_root`` defaults to the file's folder (``service.yaml`` sits at the repository root).
    ``requirements``, demo files, hooks and the Dockerfile are relative to the service's folder.
    """
    return load_manifest_with_text(path, repo_root=repo_root, port_range=port_range)[0]


def load_manifest_with_text(
    path: Path,
    *,
    repo_root: Path | None = None,
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
) -> tuple[ManifestFile, str]:
    """``load_manifest_file``, also returning the file's text (what a revision records).

    The file itself must be inside ``repo_root`` too (a ``service.yaml`` that is a symlink
    out of the checkout is refused, and never read), and at most 256 KiB is ever read.
    """
    root = repo_root if repo_root is not None else path.parent
    filename = _display_name(path, root)
    text = _decode(_read_capped(path, root, filename), filename)
    manifest, doc = _load(text, filename, port_range)
    problems = _Problems(filename, doc)
    for index, service in enumerate(manifest.services):
        _check_service_paths(service, ("services", index), root, doc, problems)
    problems.raise_if_any()
    return manifest, text


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of ``service.yaml``: one service, or ``services:`` with a list."""
    refs, defs = models_json_schema(
        [(ServiceManifest, "validation"), (ManifestFile, "validation")],
        ref_template="#/$defs/{model}",
    )
    definitions = defs["$defs"]
    _describe_service_fields(definitions["ServiceManifest"])
    _header_values_as_yaml_writes_them(definitions["DemoSpec"])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "deployer service.yaml",
        "description": (
            "One service (its keys at top level) or 'services:' with a list of services. "
            "Unknown keys are errors. Check a file with `deployer validate PATH`."
        ),
        "anyOf": [refs[(ServiceManifest, "validation")], refs[(ManifestFile, "validation")]],
        "$defs": definitions,
    }


def schema_text() -> str:
    """The schema exactly as committed under ``manifests/`` (stable key order, trailing newline)."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(path: Path) -> None:
    path.write_text(schema_text(), encoding="utf-8")


# ---------------------------------------------------------------- reading


def _fail(filename: str, mark: Mark, message: str) -> NoReturn:
    raise ManifestError([f"{filename}:{mark[0]}:{mark[1]}: {message}"])


def _display_name(path: Path, root: Path) -> str:
    """The path as the repository names it (never where a symlink leads)."""
    for candidate, base in ((path, root), (path.absolute(), root.absolute())):
        try:
            return candidate.relative_to(base).as_posix()
        except ValueError:
            continue
    return str(path)


def _read_capped(path: Path, root: Path, filename: str) -> bytes:
    """Read at most one byte past the limit, so a huge file is never loaded whole; never outside ``root``."""
    try:
        return read_inside(root, filename if not Path(filename).is_absolute() else path, MAX_BYTES)
    except UnsafePath as exc:
        raise ManifestError([f"{filename}:1:1: {exc}; the file was not read"]) from None
    except FileNotFoundError:
        raise ManifestError([f"{filename}:1:1: not found"]) from None
    except OSError as exc:
        raise ManifestError([f"{filename}:1:1: cannot read the file: {exc.strerror or exc}"]) from None


def _load(text: str | bytes, filename: str, port_range: tuple[int, int]) -> tuple[ManifestFile, _Doc]:
    doc = _parse(_decode(text, filename), filename)
    data = _normalise_shape(doc, filename)
    try:
        manifest = ManifestFile.model_validate(data, strict=True, context={"port_range": port_range})
    except ValidationError as exc:
        problems = _Problems(filename, doc)
        _duplicate_names(doc, problems)
        _translate_errors(exc, doc, problems)
        problems.raise_if_any()
        raise  # unreachable: a ValidationError always has errors
    return manifest, doc


def _decode(text: str | bytes, filename: str) -> str:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if len(raw) > MAX_BYTES:
        size = f"{len(raw)} bytes or more"
        _fail(filename, (1, 1), f"file is larger than 256 KiB ({size}); keep data and models out of it")
    if isinstance(text, str):
        return text
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8", "replace")
        _fail(filename, _offset_mark(before, len(before)), f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})")


def _offset_mark(text: str, offset: int) -> Mark:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


# ---------------------------------------------------------------- YAML


def _parse(text: str, filename: str) -> _Doc:
    yaml = YAML(typ="safe", pure=True)
    problems = _Problems(filename)
    try:
        _scan_events(yaml, text, problems)
        problems.raise_if_any()
        root = yaml.compose(text)
    except YAMLError as exc:
        raise ManifestError([_yaml_error_line(exc, text, filename)]) from None
    if root is None:
        _fail(filename, (1, 1), "the file is empty; expected a service (name: …) or 'services:'")
    doc = _Doc()
    doc.data = _build(yaml, root, (), doc, problems)
    problems.raise_if_any()
    return doc


def _scan_events(yaml: YAML, text: str, problems: _Problems) -> None:
    """Refuse anchors, aliases, tags, extra documents and deep nesting before anything is built.

    Scanning events builds nothing, so an alias bomb ("billion laughs") costs nothing here.
    """
    depth = documents = 0
    for event in yaml.parse(text):
        mark = _mark(event.start_mark)
        if isinstance(event, DocumentStartEvent):
            documents += 1
            if documents > 1:
                return problems.add(mark, None, "only one YAML document is allowed (found a second '---')")
        if isinstance(event, AliasEvent) or (isinstance(event, NodeEvent) and event.anchor):
            return problems.add(mark, None, "anchors and aliases are not allowed")
        tag = getattr(event, "tag", None)
        if tag is not None:
            problems.add(mark, None, f"tags are not allowed (found {_short_tag(tag)})")
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                return problems.add(mark, None, f"nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, CollectionEndEvent):
            depth -= 1
    return None


def _build(yaml: YAML, node: Node, loc: Loc, doc: _Doc, problems: _Problems) -> Any:
    """Plain dicts, lists and scalars from a node, recording where each value starts."""
    doc.values[loc] = _mark(node.start_mark)
    if isinstance(node, MappingNode):
        return _build_mapping(yaml, node, loc, doc, problems)
    if isinstance(node, SequenceNode):
        return [_build(yaml, item, (*loc, index), doc, problems) for index, item in enumerate(node.value)]
    if node.tag not in _PLAIN_TAGS:
        kind = str(node.tag).removeprefix(_YAML_TAG)
        problems.add(doc.values[loc], loc, f"a {kind} is not allowed here; quote it to make it text")
        return None
    return yaml.constructor.construct_object(node, deep=True)


def _build_mapping(yaml: YAML, node: MappingNode, loc: Loc, doc: _Doc, problems: _Problems) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key_mark = _mark(key_node.start_mark)
        key = _mapping_key(key_node, key_mark, loc, problems)
        if key is None:
            continue
        if key in result:
            first = doc.keys[(*loc, key)][0]
            problems.add(key_mark, loc, f"duplicate key '{key}' (first defined on line {first})")
            continue
        doc.keys[(*loc, key)] = key_mark
        result[key] = _build(yaml, value_node, (*loc, key), doc, problems)
    return result


def _mapping_key(node: Node, mark: Mark, loc: Loc, problems: _Problems) -> str | None:
    if node.tag == _YAML_TAG + "merge":
        problems.add(mark, loc, "merge keys ('<<') are not allowed")
        return None
    if not isinstance(node, ScalarNode) or node.tag != _YAML_TAG + "str":
        problems.add(mark, loc, f"keys must be text (got {_node_text(node)}); quote the key")
        return None
    return str(node.value)


def _node_text(node: Node) -> str:
    if isinstance(node, ScalarNode):
        return str(node.value)
    return "a list" if isinstance(node, SequenceNode) else "a mapping"


def _mark(mark: Any) -> Mark:
    return int(mark.line) + 1, int(mark.column) + 1


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag


def _yaml_error_line(exc: YAMLError, text: str, filename: str) -> str:
    if isinstance(exc, MarkedYAMLError) and exc.problem_mark is not None:
        line, col = _mark(exc.problem_mark)
        context = f" ({exc.context})" if exc.context else ""
        return f"{filename}:{line}:{col}: YAML syntax error: {exc.problem}{context}"
    position = getattr(exc, "position", None)
    line, col = _offset_mark(text, position) if isinstance(position, int) else (1, 1)
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{filename}:{line}:{col}: YAML error: {reason}"


# ---------------------------------------------------------------- shape


def _normalise_shape(doc: _Doc, filename: str) -> dict[str, Any]:
    """Either ``services:`` alone, or one service at top level (wrapped as ``services[0]``)."""
    if not isinstance(doc.data, dict):
        kind = "a list" if isinstance(doc.data, list) else f"{doc.data!r}"
        message = f"the top level must be a mapping (a service, or 'services:'), got {kind}"
        _fail(filename, doc.value_mark(()), message)
    if "services" not in doc.data:
        doc.single = True
        _reroot(doc, _SERVICE_PREFIX)
        return {"services": [doc.data]}
    problems = _Problems(filename, doc)
    for key in doc.data:
        if key != "services":
            problems.add(
                doc.key_mark((key,)),
                (key,),
                "not allowed next to 'services' (with 'services:', it must be the only top-level key; "
                "put service keys inside its list entries)",
            )
    problems.raise_if_any()
    return dict(doc.data)


def _reroot(doc: _Doc, prefix: Loc) -> None:
    doc.values = {(*prefix, *loc): mark for loc, mark in doc.values.items()}
    doc.keys = {(*prefix, *loc): mark for loc, mark in doc.keys.items()}
    doc.values.setdefault(prefix[:1], (1, 1))


# ---------------------------------------------------------------- pydantic errors


@dataclass
class _Located:
    loc: Loc  # path in the data, union-member tags removed
    union: bool = False  # the error is one alternative of a union (e.g. 'auto' or an integer)
    key_error: bool = False  # the error is about a mapping key, not its value
    model: type[BaseModel] | None = None  # the model owning the last segment, to list allowed keys


def _translate_errors(exc: ValidationError, doc: _Doc, problems: _Problems) -> None:
    union_groups: dict[Loc, list[tuple[dict[str, Any], _Located]]] = {}
    for error in exc.errors(include_url=False):
        located = _locate(tuple(error["loc"]))
        if located.union:
            union_groups.setdefault(located.loc, []).append((dict(error), located))
        elif located.loc == () and error["type"] == "value_error" and problems:
            continue  # the file-wide duplicate-name check, already reported at the exact place
        else:
            _report(dict(error), located, doc, problems)
    for loc, group in union_groups.items():
        alternatives = " or ".join(_expected(error) for error, _ in group)
        problems.add(doc.value_mark(loc), loc, f"must be {alternatives}{_got(loc, group[0][0]['input'])}")


def _report(error: dict[str, Any], located: _Located, doc: _Doc, problems: _Problems) -> None:
    loc = located.loc
    kind = error["type"]
    if kind == "missing":
        parent = loc[:-1]
        problems.add(doc.key_mark(parent), parent, f"required key '{loc[-1]}' is missing")
    elif kind == "extra_forbidden":
        problems.add(doc.key_mark(loc), loc[:-1], _unknown_key(str(loc[-1]), located.model))
    elif located.key_error:
        problems.add(doc.key_mark(loc), loc, "key " + _message(error, loc))
    else:
        problems.add(doc.value_mark(loc), loc, _message(error, loc))


def _locate(raw: Loc) -> _Located:
    """Follow pydantic's error path through the model's types to drop union tags and '[key]'."""
    located = _Located(loc=())
    current: Any = ManifestFile
    for segment in raw:
        if segment == "[key]":
            located.key_error = True
            continue
        current = _strip_optional(current)
        if _is_union(current):
            # this segment names the union member, not a place in the file; a tagged member (one
            # chosen by its input's shape) is the only one tried, so its errors are reported as its own
            current = _tagged_member(current, segment)
            located.union = located.union or current is None
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            located.model = current
            info = next((field for name, field in current.model_fields.items()
                         if str(segment) in (name, field.alias)), None)
            current = info.annotation if info is not None else None
        else:
            current = _item_type(current)
        located.loc = (*located.loc, segment)
    return located


def _strip_optional(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if _is_union(tp):
        members = [arg for arg in get_args(tp) if arg is not type(None)]
        if len(members) == 1:
            return _strip_optional(members[0])
    return tp


def _tagged_member(union: Any, tag: str | int) -> Any:
    for member in get_args(union):
        if get_origin(member) is Annotated and any(isinstance(meta, Tag) and meta.tag == tag
                                                   for meta in member.__metadata__):
            return get_args(member)[0]
    return None


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _item_type(tp: Any) -> Any:
    """The type inside a list or the value type of a dict; None when unknown."""
    args = get_args(tp)
    if get_origin(tp) in (list, tuple) and args:
        return args[0]
    if get_origin(tp) is dict and len(args) == 2:
        return args[1]
    return None


def _unknown_key(key: str, model: type[BaseModel] | None) -> str:
    allowed = [info.alias or name for name, info in model.model_fields.items()] if model is not None else []
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown key '{key}'{hint} (allowed: {', '.join(allowed)})"


def _message(error: dict[str, Any], loc: Loc) -> str:
    """A pydantic error in the user's terms."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error["input"]
    got = _got(loc, value)
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    if kind == "literal_error":
        return f"must be one of {ctx['expected'].replace(' or ', ', ')}{got}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx["pattern"])
        rule = _PATTERN_RULES.get(pattern)
        return f"must match {pattern}" + (f": {rule}" if rule else "") + got
    if kind in _BOUNDS:
        return f"must be {_BOUNDS[kind]} {_bound_value(kind, ctx)}{got}"
    if kind == "too_short" and loc == ("services",):
        return "must list at least one service"
    if kind in _LENGTHS:
        return _LENGTHS[kind].format(**ctx)
    if kind in _TYPES:
        return f"must be {_TYPES[kind]}{got}"
    return str(error["msg"])[:1].lower() + str(error["msg"])[1:] + got


def _expected(error: dict[str, Any]) -> str:
    """One alternative of a union, for "must be 'auto' or an integer"."""
    if error["type"] == "literal_error":
        return str((error.get("ctx") or {}).get("expected", "a fixed value"))
    return _TYPES.get(error["type"], "a valid value")


def _got(loc: Loc, value: Any) -> str:
    # Environment values may be sensitive enough not to echo into logs and the page.
    if any(part in ("env", "build_args", "headers") for part in loc if isinstance(part, str)):
        return ""
    if isinstance(value, dict | list):
        return " (got a mapping)" if isinstance(value, dict) else " (got a list)"
    text = repr(value)
    return f" (got {text[:60]}{'…' if len(text) > 60 else ''})"


_BOUNDS = {
    "greater_than": "greater than",
    "greater_than_equal": "at least",
    "less_than": "less than",
    "less_than_equal": "at most",
}


def _bound_value(kind: str, ctx: dict[str, Any]) -> str:
    bound = ctx.get({"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt"}.get(kind, "le"))
    return str(int(bound)) if isinstance(bound, float) and bound.is_integer() else str(bound)


_LENGTHS = {
    "too_short": "must have at least {min_length} item(s)",
    "too_long": "must have at most {max_length} item(s)",
    "string_too_short": "must be at least {min_length} character(s) long",
    "string_too_long": "must be at most {max_length} characters long",
}

_TYPES = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "text",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "none_required": "empty",
}


def _duplicate_names(doc: _Doc, problems: _Problems) -> None:
    """Point at the second use of a name (the model's own check only knows the whole file)."""
    first_line: dict[str, int] = {}
    services = doc.data.get("services") if isinstance(doc.data, dict) else None
    for index, service in enumerate(services if isinstance(services, list) else []):
        name = service.get("name") if isinstance(service, dict) else None
        if not isinstance(name, str):
            continue
        loc: Loc = ("services", index, "name")
        if name in first_line:
            message = f"service name '{name}' is used twice (first on line {first_line[name]})"
            problems.add(doc.value_mark(loc), loc, message)
        else:
            first_line[name] = doc.value_mark(loc)[0]


def _format_loc(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


# ---------------------------------------------------------------- files on disk


def _check_service_paths(
    service: ServiceManifest, loc: Loc, root: Path, doc: _Doc, problems: _Problems
) -> None:
    folder = root / service.path
    if not is_contained(root, service.path):
        problems.add(doc.value_mark((*loc, "path")), (*loc, "path"), _outside(service.path))
        return
    if not folder.is_dir():
        message = f"folder '{service.path}' does not exist in the repository"
        problems.add(doc.value_mark((*loc, "path")), (*loc, "path"), message)
        return
    for field_loc, relative in _referenced_files(service):
        _check_file(root, Path(service.path) / relative, relative, (*loc, *field_loc), doc, problems)
    for index, artifact in enumerate(service.artifacts):
        _check_artifact_place(folder, artifact.path, (*loc, "artifacts", index, "path"), doc, problems)


def _referenced_files(service: ServiceManifest) -> Iterator[tuple[Loc, str]]:
    """Every file the manifest names, relative to the service folder, with its place in the file."""
    if service.requirements is not None:
        yield ("requirements",), service.requirements
    for index, demo in enumerate(service.demo):
        for key in ("input", "file"):
            value = getattr(demo, key)
            if value is not None:
                yield ("demo", index, key), value
    for key in ("pre_deploy", "post_deploy"):
        value = getattr(service.hooks, key)
        if value is not None:
            yield ("hooks", key), value
    if service.docker.dockerfile is not None:
        yield ("docker", "dockerfile"), service.docker.dockerfile
    for index, entry in enumerate(service.files):
        if entry.from_ is not None:
            yield ("files", index, "from"), entry.from_


def _check_file(root: Path, in_repo: Path, relative: str, loc: Loc, doc: _Doc, problems: _Problems) -> None:
    """``relative`` as the manifest names it (from the service folder); ``in_repo`` from the repository root."""
    if not is_contained(root, in_repo):  # every symlink followed: a link pointing out is caught here
        problems.add(doc.value_mark(loc), loc, _outside(relative))
    elif not (root / in_repo).is_file():
        problems.add(doc.value_mark(loc), loc, f"file '{relative}' does not exist in the service folder")


def _check_artifact_place(folder: Path, relative: str, loc: Loc, doc: _Doc, problems: _Problems) -> None:
    """An artifact lands inside its service folder: no symlink on the way leads out, no folder stands there."""
    if not is_contained(folder, relative):
        problems.add(doc.value_mark(loc), loc, f"'{relative}' leads outside the service folder "
                                               "(a symlink pointing out is not allowed)")
    elif (folder / relative).is_dir():
        problems.add(doc.value_mark(loc), loc, f"'{relative}' is a folder in the repository; name a file")


def _outside(relative: str) -> str:
    return f"'{relative}' leads outside the repository (a symlink pointing out is not allowed)"


def _describe_service_fields(definition: dict[str, Any]) -> None:
    definition["description"] = "One service as written in service.yaml."
    for name, prop in definition.get("properties", {}).items():
        if name in _SERVICE_FIELD_HELP:
            prop.setdefault("description", _SERVICE_FIELD_HELP[name])
    # The model turns YAML numbers and booleans in env into text; editors must accept them too.
    for values in definition["properties"]["env"].get("patternProperties", {}).values():
        values["type"] = ["string", "number", "boolean"]


def _header_values_as_yaml_writes_them(definition: dict[str, Any]) -> None:
    """Demo header values are text too (numbers and booleans converted), or ``{secret: NAME}``."""
    for values in definition["properties"]["headers"].get("patternProperties", {}).values():
        values["oneOf"][0]["type"] = ["string", "number", "boolean"]
