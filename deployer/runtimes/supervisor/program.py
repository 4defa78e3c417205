"""Supervisor program files: rendered from the operator-editable template, escaped, parse-checked.

Supervisor's INI is an injection surface, so every value is checked and escaped
here (DESIGN §6), and ``check_program`` proves with supervisor's own parser that a
file holds exactly the one program its header names. Output is deterministic; the
header carries a hash of the body below it, so a hand edit is visible as drift.
"""

from __future__ import annotations

import configparser
import functools
import hashlib
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from supervisor.options import ServerOptions, UnhosedConfigParser

from deployer.errors import Reason, StalledError
from deployer.model.deployment import Deployment
from deployer.model.manifest import ENV_KEY_PATTERN, INSTANCE_PATTERN

PROGRAM_TEMPLATE = "supervisor/program.conf.j2"
HEADER_PREFIX = "; deployer: "
# Fixed rather than the daemon's own PATH: output must not depend on how the daemon was started.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Services are Python: unbuffered output makes logs() show what a service printed right away.
DEFAULT_ENV = {"PYTHONUNBUFFERED": "1"}

_NAME = re.compile(INSTANCE_PATTERN)
_ENV_KEY = re.compile(ENV_KEY_PATTERN)
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# C0/C1 controls, DEL and Unicode line separators; a tab is plain whitespace (the manifest allows it).
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
# configparser reads ";" or "#" after whitespace as an inline comment, even inside quotes.
_INLINE_COMMENT = re.compile(r"\s[;#]")
# A quote that opens a quoted span: at the start or after a character that is not a letter or digit.
_OPENING_QUOTE = re.compile(r"(?<![A-Za-z0-9])['\"]")
# port and body-hash are optional: files written before they existed still read back.
_HEADER = re.compile(
    r"^; deployer: service=(?P<name>[a-z][a-z0-9-]*) revision=(?P<revision>[0-9]+)"
    r" spec-hash=(?P<spec_hash>[0-9a-f]+)(?: port=(?P<port>[0-9]{1,5}))?(?: body-hash=(?P<body_hash>[0-9a-f]{64}))?$"
)


class RenderError(StalledError):
    """A deployment cannot be written safely; the message names the field, never its value."""

    reason = Reason.APPLY_FAILED


@dataclass(frozen=True)
class ProgramHeader:
    """What the first line of a program file says about the deployment it holds.

    ``body_hash`` is the sha256 of every line below the header as written; ``port`` is the
    service's port, so leftovers holding it can be found without parsing the body.
    """

    name: str
    revision: int
    spec_hash: str
    port: int | None = None
    body_hash: str | None = None


@dataclass(frozen=True)
class ProgramSettings:
    """What supervisord would run from a program file: enough to recognise its processes."""

    name: str
    argv: tuple[str, ...]
    directory: str | None
    environment: dict[str, str]


def parse_header(line: str) -> ProgramHeader | None:
    """The header of a program file deployer wrote, or None for any other line."""
    match = _HEADER.match(line.rstrip("\n"))
    if match is None:
        return None
    port = int(match["port"]) if match["port"] else None
    return ProgramHeader(match["name"], int(match["revision"]), match["spec_hash"], port, match["body_hash"])


def format_header(header: ProgramHeader) -> str:
    """The first line of a program file (no newline); ``parse_header`` reads it back."""
    fields = [f"service={header.name}", f"revision={header.revision}", f"spec-hash={header.spec_hash}"]
    if header.port is not None:
        fields.append(f"port={header.port}")
    if header.body_hash is not None:
        fields.append(f"body-hash={header.body_hash}")
    return HEADER_PREFIX + " ".join(fields)


def body_hash(body: str) -> str:
    """sha256 of the text below the header, exactly as written."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def body_intact(text: str) -> bool:
    """False when the file's body no longer hashes to its header's body-hash (edited by hand).

    A header without a body-hash (written by an older deployer) cannot tell, so it reads as intact.
    """
    first, _, body = text.partition("\n")
    header = parse_header(first)
    return header is None or header.body_hash is None or body_hash(body) == header.body_hash


def program_environment(deployment: Deployment) -> dict[str, str]:
    """The process environment, keys sorted: the service's env/bin first on PATH.

    A PATH from the manifest is kept after env/bin; otherwise a fixed system PATH follows.
    """
    env = {**DEFAULT_ENV, **deployment.full_environment()}
    path = env.get("PATH", SYSTEM_PATH)
    if deployment.env_dir is not None:
        path = f"{deployment.env_dir / 'bin'}{os.pathsep}{path}"
    env["PATH"] = path
    return dict(sorted(env.items()))


def render_program(deployment: Deployment, *, templates_dir: Path, log_dir: Path, user: str = "") -> str:
    """One ``[program:NAME]`` file for ``deployment``; raises ``RenderError`` on unsafe input.

    The first line is deployer's header (``format_header``) with the hash of the rendered body
    below it. The fixed settings and why they are what they are (``autorestart=true``: a server has no
    expected exit; ``startsecs=1``, never 0) are explained in the template itself.
    """
    name = _checked_name(deployment.name)
    body = _without_header(_render_body(deployment, name, templates_dir, log_dir, user))
    header = ProgramHeader(name, deployment.revision, deployment.desired.spec_hash, deployment.port, body_hash(body))
    return f"{format_header(header)}\n{body}"


def _render_body(deployment: Deployment, name: str, templates_dir: Path, log_dir: Path, user: str) -> str:
    context = {
        "name": name,
        "revision": deployment.revision,
        "spec_hash": deployment.desired.spec_hash,
        "command": _command(deployment.argv, name),
        "directory": _path_value(deployment.workdir, f"service {name}: directory"),
        "environment": _environment(program_environment(deployment), name),
        "stdout_logfile": _path_value(log_dir / f"{name}.log", f"service {name}: log file"),
        "user": _checked_user(user, name),
    }
    text = _render_template(templates_dir, PROGRAM_TEMPLATE, context, name)
    return text.rstrip("\n") + "\n"


def _without_header(body: str) -> str:
    # An operator's copy of the template from before render wrote the header still has its own.
    return body.split("\n", 1)[1] if body.startswith(HEADER_PREFIX) else body


def check_program(text: str, *, environment: Mapping[str, str] | None = None) -> None:
    """Prove with supervisor's own parser that ``text`` is exactly the program its header names.

    Rejects a missing header, any section besides ``[program:NAME]``, duplicate keys, anything
    supervisor refuses, ``startsecs=0``, (when given) an environment that does not parse
    back to ``environment`` exactly, and a body that does not match the header's body-hash.
    """
    header = _required_header(text)
    where = f"service {header.name}: program file"
    _check_text(text, where)
    config = _program_config(text, header.name, where)
    if config.startsecs < 1:
        raise RenderError(f"{where}: startsecs must be at least 1 (0 makes a crash loop with no backoff)")
    if environment is not None:
        _compare_environment(dict(config.environment or {}), environment, where)
    if not body_intact(text):
        raise RenderError(f"{where}: the body does not match the body-hash in its header")


def program_settings(text: str) -> ProgramSettings:
    """Command, directory and environment of a program file, read with supervisor's own parser.

    Raises ``RenderError`` when the file is not a single program deployer could have written.
    """
    header = _required_header(text)
    config = _program_config(text, header.name, f"service {header.name}: program file")
    argv = tuple(shlex.split(config.command))
    return ProgramSettings(header.name, argv, config.directory, dict(config.environment or {}))


def _program_config(text: str, name: str, where: str) -> Any:
    parser = _parse(text, where)
    section = f"program:{name}"
    if parser.sections() != [section]:
        found = len(parser.sections())
        raise RenderError(f"{where}: must hold exactly one section [{section}] and nothing else (found {found})")
    return _process_config(parser, section, name, where)


def _checked_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise RenderError(f"service name {name!r}: must match {INSTANCE_PATTERN}")
    return name


def _checked_user(user: str, name: str) -> str:
    if user and not _USER.fullmatch(user):
        raise RenderError(f"service {name}: supervisor user {user!r} is not a valid user name")
    return user


def _ini_value(value: str, where: str) -> str:
    """``value`` checked against the INI rules, with every ``%`` doubled for supervisor's expansion."""
    if _CONTROL.search(value):
        problem = "must not contain a newline, carriage return, NUL or other control character"
    elif _INLINE_COMMENT.search(value):
        problem = "must not contain whitespace followed by ';' or '#' (supervisor reads a comment)"
    elif "%(" in value:
        problem = "must not contain '%(' (supervisor would expand it)"
    else:
        return value.replace("%", "%%")
    raise RenderError(f"{where}: {problem}; the value is not shown")


def _path_value(path: Path, where: str) -> str:
    text = str(path)
    if not path.is_absolute() or text != text.strip():
        raise RenderError(f"{where}: must be an absolute path without surrounding whitespace")
    return _ini_value(text, where)


def _command(argv: tuple[str, ...], name: str) -> str:
    """Each argument shell-quoted: supervisor splits the command itself, no shell runs it."""
    if not argv:
        raise RenderError(f"service {name}: command is empty; set 'command' in service.yaml")
    parts = [_ini_value(arg, f"service {name}: command argument {index}") for index, arg in enumerate(argv)]
    return " ".join(shlex.quote(part) for part in parts)


def _environment(env: Mapping[str, str], name: str) -> str:
    return ",".join(_env_entry(key, value, name) for key, value in sorted(env.items()))


def _env_entry(key: str, value: str, name: str) -> str:
    where = f"service {name}: environment {key}"
    if not _ENV_KEY.fullmatch(key):
        raise RenderError(f"service {name}: environment key {key!r} must match {ENV_KEY_PATTERN}")
    escaped = _ini_value(value, where)
    # supervisor strips every leading and trailing quote and has no escape for a quote inside quotes.
    if '"' in value and "'" in value:
        raise RenderError(f"{where}: must not contain both single and double quotes; the value is not shown")
    if value.startswith(("'", '"')) or value.endswith(("'", '"')):
        raise RenderError(f"{where}: must not start or end with a quote; the value is not shown")
    quote = "'" if '"' in value else '"'
    return f"{key}={quote}{escaped}{quote}"


@functools.lru_cache(maxsize=8)
def _jinja(templates_dir: Path) -> jinja2.Environment:
    # autoescape is for HTML; INI values are escaped field by field above.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _render_template(templates_dir: Path, template: str, context: dict[str, Any], name: str) -> str:
    try:
        return _jinja(templates_dir).get_template(template).render(context)
    except jinja2.TemplateError as exc:
        # Jinja messages name the template and the variable, never a context value.
        raise RenderError(f"service {name}: template {templates_dir / template}: {exc}") from exc


def _required_header(text: str) -> ProgramHeader:
    header = parse_header(text.split("\n", 1)[0])
    if header is None:
        raise RenderError(f"program file: the first line must be '{HEADER_PREFIX}service=NAME ...'")
    return header


def _check_text(text: str, where: str) -> None:
    for number, line in enumerate(text.split("\n"), start=1):
        if _CONTROL.search(line):
            raise RenderError(f"{where}: line {number} holds a control character")


def _parse(text: str, where: str) -> UnhosedConfigParser:
    # A strict parse first: supervisor's parser silently merges duplicate sections and keys.
    strict = configparser.RawConfigParser(strict=True, inline_comment_prefixes=(";", "#"))
    parser = UnhosedConfigParser()
    try:
        strict.read_string(text)
        parser.read_string(text)
    except configparser.Error as exc:
        raise RenderError(f"{where}: not valid INI: {redact(str(exc))}") from exc
    return parser


def _process_config(parser: UnhosedConfigParser, section: str, name: str, where: str) -> Any:
    try:
        configs = ServerOptions().processes_from_section(parser, section, name)
    except (ValueError, KeyError) as exc:
        raise RenderError(f"{where}: supervisor rejects it: {redact(str(exc))}") from exc
    if len(configs) != 1 or configs[0].name != name:
        raise RenderError(f"{where}: must define exactly one process named {name}, found {len(configs)}")
    return configs[0]


def _compare_environment(parsed: dict[str, str], expected: Mapping[str, str], where: str) -> None:
    differing = sorted(key for key in set(parsed) | set(expected) if parsed.get(key) != expected.get(key))
    if differing:
        raise RenderError(f"{where}: environment does not parse back as written for {', '.join(differing)}")


def redact(message: str) -> str:
    """``message`` with everything from its first opening quote to its last quote hidden.

    Parser messages quote the offending text (an environment string may hold secrets);
    a value may itself contain quotes, so nothing between the outermost ones is kept. An
    apostrophe inside a word ("can't") opens no quote: such a message is never cut there.
    """
    opening = _OPENING_QUOTE.search(message)
    if opening is None:
        return message
    last = max(message.rfind("'"), message.rfind('"'))
    if last <= opening.start():
        return message
    return f"{message[:opening.start()]}'<hidden>'{message[last + 1:]}"
