"""Settings: defaults < deployer.toml < environment, one-line errors, secrets never from the toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.errors import ConfigError
from deployer.settings import load_settings

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
