"""External mode: the operator's nginx, which ``include``s one file deployer owns inside its ``http {}``.

deployer renders only upstream and server blocks into ``[gateway] conf_path``: one tier, proxied
straight to the slots, so a slot switch reloads the operator's nginx (whose old workers close
idle keep-alive connections; clients that retry an idempotent request on a closed keep-alive
connection, as browsers and urllib3 do, do not notice). The operator's
``nginx -t`` tests the whole config, which includes that file, so the candidate is tested in
place: written over the file, tested, and the previous text put back when nginx refuses it.
Then ``[gateway] reload_command`` runs (e.g. ``systemctl reload nginx``).
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from deployer.errors import GatewayError, GatewayRejected, GatewayUnavailable
from deployer.gateway.files import read_text, write_atomic
from deployer.gateway.nginx import ACCESS_LOG_MAX, ErrorLog, find_nginx, nginx_message, run
from deployer.gateway.probe import generation_at
from deployer.gateway.render import ConfigRenderer, Rendered, generation_of

_SETTLE_SECONDS = 0.2


class ExternalNginx:
    """Write, test and reload through the operator's nginx; never start or stop it."""

    errors: ErrorLog | None = None  # the operator's error log is theirs; failures are diagnosed by probing

    def __init__(self, conf_path: Path, renderer: ConfigRenderer, *, nginx: str, reload_command: str,
                 test_command: str, access_log: Path, probe: tuple[str, int]) -> None:
        self.renderer = renderer
        self.access_log = access_log
        self._conf_path = conf_path
        self._nginx = nginx
        self._reload = shlex.split(reload_command)
        self._test = shlex.split(test_command)
        self._probe = probe
        self._answered_at: float | None = None
        if not self._reload:
            raise GatewayUnavailable("[gateway] conf_path is set but reload_command is empty")

    @property
    def live_file(self) -> Path:
        return self._conf_path

    def generation(self) -> str | None:
        """The generation the operator's nginx answers on ``[gateway] listen`` now."""
        return generation_at(*self._probe)

    def ensure(self) -> str | None:
        """nginx installed, the file's folder there, and (once written) the file's routes answering."""
        self._test_command()
        if not self._conf_path.parent.is_dir():
            raise GatewayUnavailable(f"[gateway] conf_path: folder {self._conf_path.parent} does not exist")
        text = read_text(self._conf_path)
        if text is None:
            return None  # the first apply writes it
        live = self.generation()
        if live is None:
            raise GatewayUnavailable(
                f"nginx does not answer on {self._probe[0]}:{self._probe[1]}: is it running, and does its "
                f"http {{}} include {self._conf_path}?")
        written = generation_of(text)
        if live != written:
            return f"nginx serves gateway generation {live} but {self._conf_path} holds {written or 'an edited file'}"
        self._rotate_access_log()
        return None

    def _rotate_access_log(self) -> None:
        """The access log is in deployer's state dir, where the operator's logrotate does not look.

        Renamed to ``.1`` past its size; the reload that follows makes nginx open the path anew.
        """
        try:
            if self.access_log.stat().st_size <= ACCESS_LOG_MAX:
                return
        except FileNotFoundError:
            return
        os.replace(self.access_log, self.access_log.with_name(self.access_log.name + ".1"))
        self.reload()

    def install(self, rendered: Rendered, previous: str | None) -> None:
        write_atomic(self._conf_path, rendered.text)
        code, output = run(self._test_command())
        if code != 0:
            self.restore(previous)
            raise GatewayRejected(nginx_message(output) or f"{shlex.join(self._test_command())} exited with {code}")

    def restore(self, previous: str | None) -> None:
        if previous is None:
            self._conf_path.unlink(missing_ok=True)
        else:
            write_atomic(self._conf_path, previous)

    def reload(self) -> None:
        self._answered_at = None
        code, output = run(self._reload)
        if code != 0:
            said = output.strip().splitlines()[-3:]
            raise GatewayError(f"{shlex.join(self._reload)} exited with {code}: {' '.join(said) or 'no output'}")

    def settled(self) -> bool:
        """Asked once the marker answers the new generation; true a moment later.

        The operator's workers are not ours to watch (embedded mode checks that the old ones were
        told to quit); their master tells them within milliseconds of starting the new ones.
        """
        now = time.monotonic()
        if self._answered_at is None:
            self._answered_at = now
        return now - self._answered_at >= _SETTLE_SECONDS

    def shutdown(self, timeout: float = 10.0) -> None:
        """The operator's nginx is not deployer's to stop."""

    def _test_command(self) -> list[str]:
        return self._test or [find_nginx(self._nginx), "-t", "-q"]
