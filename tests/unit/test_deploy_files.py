"""The files that run deployer itself parse with their own tools' rules."""

from __future__ import annotations

import configparser
from pathlib import Path

from supervisor.options import UnhosedConfigParser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_supervisor_program_for_deployer_parses() -> None:
    parser = UnhosedConfigParser()
    parser.read_string((DEPLOY / "deployer.supervisor.conf").read_text())
    assert parser.sections() == ["program:deployer"]
    assert parser.get("program:deployer", "stopsignal") == "TERM"
    assert int(parser.get("program:deployer", "stopwaitsecs")) >= 60
    assert parser.get("program:deployer", "killasgroup") == "false"


def test_systemd_unit_has_the_essentials() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)  # systemd repeats keys
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "deployer.service").read_text())
    service = unit["Service"]
    assert service["ExecStart"].split()[1:3] == ["serve", "--log-format"]
    assert service["KillMode"] == "process", "the embedded supervisord must outlive a restart"
    assert int(service["TimeoutStopSec"]) >= 60
    assert unit["Install"]["WantedBy"] == "multi-user.target"
