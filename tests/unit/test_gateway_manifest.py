"""The gateway's inputs, refused before anything is rendered: manifest keys and [gateway] settings."""

from __future__ import annotations

import pytest

from deployer.errors import ConfigError, ManifestError
from deployer.loader import load_manifest
from deployer.model.desired import DesiredService
from deployer.settings import load_settings


def _problems(text: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(text)
    return caught.value.problems


def _gateway(path_yaml: str, extra: str = "") -> str:
    return f"name: text-classify\ngateway:\n  path: {path_yaml}\n{extra}"


def test_gateway_path_and_rollout_are_read() -> None:
    service = load_manifest(_gateway("/ai/text-classify/", "rollout: {strategy: recreate}\n")).services[0]
    assert service.gateway is not None and service.gateway.path == "/ai/text-classify/"
    assert service.gateway.strip_prefix is True
    assert service.rollout is not None and service.rollout.strategy == "recreate"
    kept = load_manifest("name: a\ngateway: {path: /a/, strip_prefix: false}\n").services[0]
    assert kept.gateway is not None and kept.gateway.strip_prefix is False
    assert load_manifest("name: a\n").services[0].rollout is None  # the lead picks by whether the gateway is on


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ('"/ai x/"', "'/ai x/'"),  # whitespace
        ('"/ai\\t/"', "'/ai\\t/'"),
        ("'/ai\"/'", "'/ai\"/'"),  # quotes
        ('"/ai\'/"', '"/ai\'/"'),
        ('"/ai;/"', "'/ai;/'"),
        ('"/ai{/"', "'/ai{/'"),
        ('"/ai}/"', "'/ai}/'"),
        ('"/ai$x/"', "'/ai$x/'"),
        ('"/ai#x/"', "'/ai#x/'"),
        ('"/ai\\n/"', "'/ai\\n/'"),  # control characters
        ('"/ai\\r/"', "'/ai\\r/'"),
        ('"/ai\\x00/"', "'/ai\\x00/'"),
        ('"/ai\\x1b/"', "'/ai\\x1b/'"),
    ],
)
def test_characters_nginx_syntax_cannot_hold_are_refused_with_file_and_line(value: str, shown: str) -> None:
    problems = _problems(_gateway(value))
    assert len(problems) == 1
    assert problems[0].startswith("service.yaml:3:9: gateway.path: must match ^/[A-Za-z0-9._~/%-]*$")
    assert problems[0].endswith(f"(got {shown})")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/ai/x", "gateway: path must start and end with '/', e.g. /ai/text-classify/ (got '/ai/x')"),
        ("ai/x/", "gateway.path: must match"),
        ("/ai//x/", "gateway: path must not hold empty, '.' or '..' segments"),
        ("/ai/../x/", "gateway: path must not hold empty, '.' or '..' segments"),
        ("/.deployer/x/", "gateway: path /.deployer/ is reserved for the gateway itself"),
    ],
)
def test_a_gateway_path_is_a_folder_like_prefix(value: str, message: str) -> None:
    problems = _problems(_gateway(value))
    assert len(problems) == 1 and problems[0].startswith("service.yaml:3:")
    assert message in problems[0]


def test_rollout_strategy_is_one_of_two() -> None:
    assert _problems("name: a\nrollout: {strategy: canary}\n") == [
        "service.yaml:2:21: rollout.strategy: must be one of 'blue-green', 'recreate' (got 'canary')"]
    assert _problems("name: a\nrollout: {}\n") == ["service.yaml:2:1: rollout: required key 'strategy' is missing"]


def test_a_stored_spec_with_an_old_gateway_path_stays_readable() -> None:
    # Revisions recorded before the trailing-slash rule must still load (rollback reads them).
    spec = {"name": "a", "source": "s", "sha": "0" * 40, "tree": "1" * 40, "runtime": "supervisor", "port": 8800,
            "gateway": {"path": "/ai/a"}}
    desired = DesiredService.model_validate(spec)
    assert desired.gateway is not None and desired.gateway.strip_prefix is True


def test_gateway_settings_have_defaults() -> None:
    settings = load_settings(None, {})
    gateway = settings.gateway
    assert (gateway.enabled, gateway.listen, gateway.drain, gateway.nginx) == (False, "127.0.0.1:8080", 10, "nginx")
    assert (gateway.conf_path, gateway.reload_command, gateway.test_command) == (None, "", "")
    assert settings.ports.slot_bounds == (9800, 9999)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEPLOYER_GATEWAY__LISTEN": "127.0.0.1:8850"},
         "[gateway] listen: port 8850 lies inside [ports] range (8800-8999); choose a port outside both port ranges"),
        ({"DEPLOYER_GATEWAY__LISTEN": "127.0.0.1:9900"},
         "[gateway] listen: port 9900 lies inside [ports] slot_range (9800-9999)"),
        ({"DEPLOYER_PORTS__SLOT_RANGE": "8900-9100"},
         "[ports] slot_range 8900-9100 overlaps [ports] range 8800-8999; they must not share a port"),
        ({"DEPLOYER_GATEWAY__LISTEN": "127.0.0.1:8700"}, "[gateway] listen: port 8700 is [server] listen's port"),
        ({"DEPLOYER_GATEWAY__LISTEN": "8080"}, "DEPLOYER_GATEWAY__LISTEN: [gateway] listen: must be HOST:PORT"),
        ({"DEPLOYER_PORTS__SLOT_RANGE": "9999-9000"}, "[ports] slot_range: must lie within 1024-65535"),
        ({"DEPLOYER_GATEWAY__DRAIN": "-1"}, "[gateway] drain: Input should be greater than or equal to 0"),
        ({"DEPLOYER_GATEWAY__CONF_PATH": "/etc/nginx/deployer.conf"},
         '[gateway]: conf_path (external mode) needs reload_command, e.g. "systemctl reload nginx"'),
    ],
)
def test_gateway_settings_are_refused_in_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"DEPLOYER_GATEWAY__ENABLED": "true", **env})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_port_ranges_are_only_held_apart_when_the_gateway_is_on() -> None:
    # A config written before the gateway existed keeps loading while the gateway stays off.
    settings = load_settings(None, {"DEPLOYER_PORTS__RANGE": "8000-9999"})
    assert settings.ports.bounds == (8000, 9999) and not settings.gateway.enabled


def test_external_mode_settings() -> None:
    settings = load_settings(None, {"DEPLOYER_GATEWAY__CONF_PATH": "/etc/nginx/deployer/gateway.conf",
                                    "DEPLOYER_GATEWAY__RELOAD_COMMAND": "systemctl reload nginx"})
    assert str(settings.gateway.conf_path) == "/etc/nginx/deployer/gateway.conf"
    assert settings.gateway.reload_command == "systemctl reload nginx"
