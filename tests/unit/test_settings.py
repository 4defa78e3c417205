"""Settings: defaults < deployer.toml < environment, one-line errors, secrets never from the toml."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from deployer.errors import ConfigError
from deployer.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_need_no_file() -> None:
    settings = load_settings(None, {})
    assert settings.server.listen == "127.0.0.1:8700"
    assert settings.database_url.startswith("sqlite:///") and settings.database_url.endswith("state/deployer.db")
    assert settings.supervisor.socket == "embedded"
    assert settings.ports.bounds == (8800, 8999)
    assert settings.webhook_secret is None


def test_the_committed_deployer_toml_loads() -> None:
    settings = load_settings(ROOT / "deployer.toml", {})
    assert settings.reconcile.interval == 10 and settings.reconcile.poll_interval == 60
    assert [source.name for source in settings.sources] == ["example"]


def test_environment_beats_file_beats_defaults(tmp_path: Path) -> None:
    config = tmp_path / "deployer.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:9001"\n[reconcile]\ninterval = 3\n')
    env = {"DEPLOYER_SERVER__LISTEN": "127.0.0.1:9002", "DEPLOYER_GITEA__ALLOWED_OWNERS": '["acme", "ml"]',
           "DEPLOYER_DATABASE_URL": "postgresql://u@h/db", "DEPLOYER_STATE_DIR": str(tmp_path / "s")}
    settings = load_settings(config, env)
    assert settings.server.listen == "127.0.0.1:9002"
    assert settings.reconcile.interval == 3
    assert settings.gitea.allowed_owners == ["acme", "ml"]
    assert settings.database_url == "postgresql://u@h/db"
    assert settings.paths.state_dir == tmp_path / "s"


def test_secrets_come_from_files_or_environment(tmp_path: Path) -> None:
    secret_file = tmp_path / "hook-secret"
    secret_file.write_text("from-file\n")
    assert load_settings(None, {"DEPLOYER_WEBHOOK_SECRET_FILE": str(secret_file)}).webhook_secret == "from-file"
    assert load_settings(None, {"DEPLOYER_WEBHOOK_SECRET": "from-env"}).webhook_secret == "from-env"
    assert load_settings(None, {"DEPLOYER_API_TOKEN": "tok"}).api_token == "tok"
    config = tmp_path / "deployer.toml"
    config.write_text('[gitea]\nwebhook_secret = "in-git"\n')
    with pytest.raises(ConfigError, match=r"\[gitea\] webhook_secret: secrets are not read from the toml") as caught:
        load_settings(config, {})
    assert "in-git" not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEPLOYER_SERVER__BOGUS": "1"}, "[server] bogus: unknown key"),
        ({"DEPLOYER_PORTS__RANGE": "9000-8000"}, "[ports] range: must lie within 1024-65535"),
        ({"DEPLOYER_RECONCILE__INTERVAL": "soon"}, "[reconcile] interval:"),
        ({"DEPLOYER_SERVER__LISTEN": "nowhere"}, "[server] listen: must be HOST:PORT"),
    ],
)
def test_a_wrong_key_or_value_is_one_line_naming_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unreadable_secret_file_names_the_key_not_the_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gitea\.webhook_secret_file: cannot read"):
        _ = load_settings(None, {"DEPLOYER_WEBHOOK_SECRET_FILE": str(tmp_path / "missing")}).webhook_secret


@pytest.mark.parametrize(
    ("name", "read"),
    [
        ("DEPLOYER_DATABASE_URL", lambda s: s.database.url),
        ("DEPLOYER_STATE_DIR", lambda s: str(s.paths.state_dir)),
        ("DEPLOYER_WEBHOOK_SECRET", lambda s: s.webhook_secret),
        ("DEPLOYER_WEBHOOK_SECRET_FILE", lambda s: str(s.gitea.webhook_secret_file)),
        ("DEPLOYER_GITEA_URL", lambda s: s.gitea.url),
        ("DEPLOYER_GITEA_TOKEN", lambda s: s.gitea_token),
        ("DEPLOYER_GITEA_TOKEN_FILE", lambda s: str(s.gitea.token_file)),
        ("DEPLOYER_API_TOKEN", lambda s: s.api_token),
        ("DEPLOYER_API_TOKEN_FILE", lambda s: str(s.api.token_file)),
    ],
)
def test_every_short_form_sets_its_key(name: str, read: Callable[[Settings], object]) -> None:
    assert read(load_settings(None, {name: "/set/by/short-form"})) == "/set/by/short-form"


def test_the_long_spelling_wins_over_the_short_form() -> None:
    env = {"DEPLOYER_DATABASE_URL": "postgresql://short/db", "DEPLOYER_DATABASE__URL": "postgresql://long/db"}
    assert load_settings(None, env).database_url == "postgresql://long/db"


def test_section_and_key_are_case_insensitive_and_top_level_runtime_has_its_own_name() -> None:
    settings = load_settings(None, {"DEPLOYER_Server__Listen": "127.0.0.1:9003", "DEPLOYER_RUNTIME": "docker"})
    assert settings.server.listen == "127.0.0.1:9003"
    assert settings.runtime == "docker"


def test_environment_overrides_a_wrong_toml_value(tmp_path: Path) -> None:
    config = tmp_path / "deployer.toml"
    config.write_text('[reconcile]\ninterval = "soon"\n')
    assert load_settings(config, {"DEPLOYER_RECONCILE__INTERVAL": "4"}).reconcile.interval == 4


def test_secrets_from_the_environment_stay_secret() -> None:
    settings = load_settings(None, {"DEPLOYER_API__TOKEN": '{"not": "json to us"}', "DEPLOYER_GITEA_TOKEN": "g-tok"})
    assert isinstance(settings.api.token, SecretStr) and isinstance(settings.gitea.token, SecretStr)
    assert settings.api_token == '{"not": "json to us"}'
    assert "g-tok" not in repr(settings) and "json to us" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEPLOYER_SERVER__LISTN": "127.0.0.1:1"}, "DEPLOYER_SERVER__LISTN: [server] listn: unknown key"),
        ({"DEPLOYER_SERVER__LISTEN__X": "1"}, "DEPLOYER_SERVER__LISTEN__X: [server] listen__x: unknown key"),
        ({"DEPLOYER_SERVR__LISTEN": "1"}, "DEPLOYER_SERVR__LISTEN: [servr] is not a section of deployer.toml"),
        ({"DEPLOYER_SOURCES__URL": "x"}, "DEPLOYER_SOURCES__URL: [sources] is not a section of deployer.toml"),
        ({"DEPLOYER_RUNTIME__X": "docker"}, "DEPLOYER_RUNTIME__X: [runtime] is not a section of deployer.toml"),
        ({"DEPLOYER_RUNTIME": "k8s"},
         "DEPLOYER_RUNTIME: runtime: Input should be 'supervisor', 'docker' or 'swarm' (got 'k8s')"),
        ({"DEPLOYER_STATE_DIR": "s", "DEPLOYER_RECONCILE__WORKERS": "99"},
         "DEPLOYER_RECONCILE__WORKERS: [reconcile] workers: Input should be less than or equal to 64 (got '99')"),
        ({"DEPLOYER_GITEA__ALLOWED_OWNERS": "acme"},
         """DEPLOYER_GITEA__ALLOWED_OWNERS: [gitea] allowed_owners: Input should be a valid list (got 'acme'); """
         """write it as JSON, e.g. ["acme"]"""),
    ],
)
def test_an_environment_error_names_the_variable(env: dict[str, str], message: str, tmp_path: Path) -> None:
    config = tmp_path / "deployer.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:9001"\n')
    for path in (None, config):  # the variable is named, not the file, even when a file is read
        with pytest.raises(ConfigError) as caught:
            load_settings(path, env)
        assert str(caught.value) == message


def test_a_toml_error_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "deployer.toml"
    config.write_text('[server]\nlistn = "127.0.0.1:9001"\n')
    with pytest.raises(ConfigError, match=r"deployer\.toml: \[server\] listn: unknown key$"):
        load_settings(config, {"DEPLOYER_SERVER__LISTEN": "127.0.0.1:9002"})


def test_a_toml_section_that_is_a_value_is_refused_even_when_the_environment_sets_its_keys(tmp_path: Path) -> None:
    config = tmp_path / "deployer.toml"
    config.write_text("api = 1\n")
    with pytest.raises(ConfigError, match=r"deployer\.toml: api: must be a \[api\] table$"):
        load_settings(config, {"DEPLOYER_API__TOKEN_FILE": "/t"})


def test_a_missing_config_file_is_an_error_not_defaults(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read the config file: No such file"):
        load_settings(tmp_path / "missing.toml", {})


def test_an_unknown_key_never_shows_its_value() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"DEPLOYER_GITEA__WEBHOOK_SECRT": "hunter2"})
    assert str(caught.value) == "DEPLOYER_GITEA__WEBHOOK_SECRT: [gitea] webhook_secrt: unknown key"


def test_other_deployer_variables_are_not_settings() -> None:
    env = {"DEPLOYER_CONFIG": "/nowhere.toml", "DEPLOYER_SERVICE": "s", "DEPLOYER_SHA": "abc", "DEPLOYER_EVENT": "e",
           "DEPLOYER_REVISION": "1", "DEPLOYER_URL": "http://x", "DEPLOYER_REPO": "o/r", "DEPLOYER_TEST_PG_URL": "pg",
           "DEPLOYER_SERVER": '{"listen": "127.0.0.1:1"}', "deployer_server__listen": "127.0.0.1:2"}
    assert load_settings(None, env).server.listen == "127.0.0.1:8700"


def test_only_the_mapping_given_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOYER_SERVER__LISTEN", "127.0.0.1:9004")
    assert load_settings(None, {}).server.listen == "127.0.0.1:8700"
    assert Settings().server.listen == "127.0.0.1:8700"
    assert load_settings(None).server.listen == "127.0.0.1:9004"
