"""deployer's extension of its embedded supervisord: the process listing as one small answer.

supervisord loads this module itself (``[rpcinterface:deployer]`` in the embedded config, the
extension point supervisor documents for RPC interfaces), so it imports only the standard library
and supervisor: importing the daemon's own packages would cost supervisord half a second and
tens of megabytes. It sits beside the ``supervisor`` runtime package, not inside it, for the same
reason (that package's ``__init__`` imports the runtime).

Why it exists: a pass lists every program once. At 500 programs supervisor's
``getAllProcessInfo`` is a 570 KB XML-RPC answer of 7,000 structs; supervisord sends it 4 KB per
turn of its main loop, and every turn walks all 500 process groups (about 140 turns, ~200 ms),
then the caller's XML unmarshalling takes another ~100 ms. ``deployer.listProcesses`` returns
the same records — supervisor's own ``getAllProcessInfo``, cut to the fields the runtime reads —
as one JSON string, and the factory lets supervisord's HTTP channel send up to 256 KB a turn (its
4 KB is there "to spew tail -f output faster (speculative)", supervisor's own comment; a tail is
still sent as it grows). Measured at 500 programs: see bench/reconcile_scale.py.
"""

from __future__ import annotations

import json
from typing import Any

from supervisor import http
from supervisor.rpcinterface import SupervisorNamespaceRPCInterface

# What SupervisorRuntime reads of a process (supervisor/listing.py: actual_service, ProcessListing.owns).
FIELDS = ("name", "group", "statename", "pid", "spawnerr", "description", "stdout_logfile", "exitstatus")
SEND_PER_TURN = 256 * 1024


class DeployerNamespace:
    """The ``deployer.*`` XML-RPC methods of the embedded supervisord."""

    def __init__(self, supervisord: Any) -> None:
        self._supervisor = SupervisorNamespaceRPCInterface(supervisord)

    def listProcesses(self) -> str:  # XML-RPC method names are camelCase, as supervisor's
        """Every process as supervisor.getAllProcessInfo describes it, fields cut, as a JSON array.

        @return string JSON array of objects with the keys name, group, statename, pid, spawnerr,
        description, stdout_logfile and exitstatus
        """
        infos = self._supervisor.getAllProcessInfo()
        # ensure_ascii: control characters in a spawn error stay escaped, so the XML stays valid.
        return json.dumps([{key: info[key] for key in FIELDS} for info in infos], separators=(",", ":"))


def make_interface(supervisord: Any, **config: Any) -> DeployerNamespace:
    """supervisor's ``rpcinterface_factory``: called once when supervisord reads its config."""
    http.deferring_http_channel.ac_out_buffer_size = SEND_PER_TURN
    return DeployerNamespace(supervisord)
