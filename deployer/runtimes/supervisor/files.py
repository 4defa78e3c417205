"""The supervisor runtime's files: program files in the include dir, logs, pid file and lock.

Program files are read back with their header checked against the body they carry, so a
hand edit shows as drift; they are written atomically under a name the include glob skips.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deployer import host
from deployer.errors import ConfigError
from deployer.runtimes.supervisor.program import (
    ProgramHeader,
    ProgramSettings,
    RenderError,
    body_intact,
    parse_header,
    program_settings,
)

# A program file is a few hundred bytes; anything far larger is not one deployer wrote.
_MAX_PROGRAM_BYTES = 1 << 20


@dataclass(frozen=True)
class ProgramFile:
    """One program file deployer wrote: its header, its text, and whether it was edited since."""

    path: Path
    header: ProgramHeader
    text: str
    edited: bool

    @property
    def name(self) -> str:
        return self.header.name

    def settings(self) -> ProgramSettings | None:
        """What supervisord runs from it, or None when supervisor's parser refuses the file."""
        try:
            return program_settings(self.text)
        except RenderError:
            return None

    def port(self) -> int | None:
        """The header's port; an older header has none, so the environment's PORT stands in."""
        if self.header.port is not None:
            return self.header.port
        settings = self.settings()
        value = settings.environment.get("PORT", "") if settings else ""
        return int(value) if value.isdigit() else None


def read_program_files(include_dir: Path) -> dict[str, ProgramFile]:
    """Files carrying deployer's header, by service name (which must be the file's stem)."""
    found: dict[str, ProgramFile] = {}
    for path in sorted(include_dir.glob("*.conf")):
        program = read_program_file(path)
        if program is not None and program.name == path.stem:
            found[program.name] = program
    return found


def read_program_file(path: Path) -> ProgramFile | None:
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_PROGRAM_BYTES + 1)
    except OSError:
        return None  # removed between listing and reading
    try:
        text, readable = data.decode("utf-8"), True
    except UnicodeDecodeError:  # deployer writes UTF-8: anything else was edited in
        text, readable = data.decode("utf-8", errors="replace"), False
    header = parse_header(text.split("\n", 1)[0])
    if header is None:
        return None
    edited = not readable or len(data) > _MAX_PROGRAM_BYTES or not body_intact(text)
    return ProgramFile(path, header, text, edited)


def write_atomic(path: Path, text: str) -> None:
    """A program file holds the service's secrets in its environment: root's eyes only."""
    host.write_atomic(path, text, mode=0o600)


def restore(path: Path, previous: str | None) -> None:
    """Put a program file back as it was (``None``: it did not exist)."""
    if previous is None:
        path.unlink(missing_ok=True)
    else:
        write_atomic(path, previous)


def read_tail(path: Path, max_bytes: int) -> str:
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(size - max_bytes, 0))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


_EXTENSION = """
[rpcinterface:deployer]
supervisor.rpcinterface_factory = deployer.runtimes.supervisord_ext:make_interface
"""


def supervisord_conf(*, socket: Path, home: Path, pid_file: Path, include_dir: Path, log_dir: Path,
                     extension: bool = False) -> str:
    """The embedded supervisord's config; its own log and working directory are under ``home``.

    ``extension`` loads deployer's listing method (``runtimes/supervisord_ext.py``): only for a
    supervisord that runs on deployer's own Python, the one that can import it.
    """
    values = {
        "socket": socket,
        "logfile": home / "supervisord.log",
        "pidfile": pid_file,
        "childlogdir": log_dir,
        "directory": home,
        "include": include_dir / "*.conf",
    }
    paths = {key: conf_path(value) for key, value in values.items()}
    return _SUPERVISORD_CONF.format(**paths, extension=_EXTENSION if extension else "")


def conf_path(path: Path) -> str:
    """A path for supervisord.conf: no whitespace or comment characters, ``%`` escaped."""
    text = str(path)
    if any(char.isspace() or char in ";#" or ord(char) < 32 for char in text):
        raise ConfigError(f"supervisor path {text!r} must not contain whitespace, ';' or '#'")
    return text.replace("%", "%%")


_SUPERVISORD_CONF = """\
; Written by deployer for its embedded supervisord; rewritten when the daemon starts.
[unix_http_server]
file={socket}
chmod=0700

[supervisord]
logfile={logfile}
logfile_maxbytes=10MB
logfile_backups=3
pidfile={pidfile}
childlogdir={childlogdir}
directory={directory}
identifier=deployer
nodaemon=false

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
{extension}
; For operators: supervisorctl -c this-file status
[supervisorctl]
serverurl=unix://{socket}

[include]
files = {include}
"""
