"""The supervisor runtime: services as supervisord programs, one program file each.

``runtime`` drives supervisord; ``listing`` reads what runs (the process listing, the program
files, who holds a port); ``embedded`` runs deployer's own supervisord; ``program`` renders,
escapes and parse-checks a program file;
``files`` reads and writes the runtime's files; ``rpc`` is XML-RPC over the unix socket;
``orphans`` finds leftovers on a service's port. Code outside this package imports from here only.
"""

from deployer.runtimes.supervisor.files import write_atomic
from deployer.runtimes.supervisor.orphans import Orphan
from deployer.runtimes.supervisor.program import (
    SYSTEM_PATH,
    ProgramHeader,
    RenderError,
    body_hash,
    body_intact,
    check_program,
    format_header,
    parse_header,
    program_environment,
    program_settings,
    render_program,
)
from deployer.runtimes.supervisor.rpc import SupervisorProtocolError
from deployer.runtimes.supervisor.runtime import EMBEDDED, StartFailed, SupervisorRuntime

__all__ = [
    "EMBEDDED",
    "SYSTEM_PATH",
    "Orphan",
    "ProgramHeader",
    "RenderError",
    "StartFailed",
    "SupervisorProtocolError",
    "SupervisorRuntime",
    "body_hash",
    "body_intact",
    "check_program",
    "format_header",
    "parse_header",
    "program_environment",
    "program_settings",
    "render_program",
    "write_atomic",
]
