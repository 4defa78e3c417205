"""The gateway's route table and config: allow-lists, clashes, deterministic rendering, nginx's words."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from deployer.gateway import (
    GatewayConfig,
    GatewayRejected,
    Route,
    RouteTable,
    build_gateway,
    check_routes,
    generation_of,
)
from tests.conftest import unavailable
from tests.helpers import ROOT

LISTEN = 8080
TEXT = Route("text-classify", 3, (9801,), port=8801, path="/ai/text-classify/")
IMAGE = Route("image-recognise", None, (9802, 9803), path="/ai/image/", strip_prefix=False)


def _rejected(routes: list[Route]) -> GatewayRejected:
    with pytest.raises(GatewayRejected) as caught:
        check_routes(routes, listen_port=LISTEN)
    return caught.value


def _config(tmp_path: Path, templates: Path = ROOT / "templates", **values: Any) -> GatewayConfig:
    return GatewayConfig(state_dir=tmp_path / "state", templates_dir=templates, listen="127.0.0.1:18080", **values)


def _render(tmp_path: Path, routes: list[Route], *, inner: bool = False, **values: Any) -> tuple[str, str]:
    """The client-facing config (or, ``inner``, the inner nginx's) for ``routes``."""
    gateway = build_gateway(_config(tmp_path, **values))
    tier = gateway.inner if inner else gateway.backend
    assert tier is not None
    rendered = tier.renderer.render(check_routes(routes, listen_port=18080))
    return rendered.text, rendered.generation


# ---------------------------------------------------------------- routes


def test_a_valid_table_is_sorted_by_service() -> None:
    table = check_routes([TEXT, IMAGE], listen_port=LISTEN)
    assert [route.service for route in table.routes] == ["image-recognise", "text-classify"]
    assert table.ports == (8801,)


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (replace(TEXT, service="Text"), "service name 'Text' is not"),
        (replace(TEXT, service="a;b"), "service name 'a;b' is not"),
        (replace(TEXT, path="/ai/x"), "path '/ai/x' must start and end with '/'"),
        (replace(TEXT, path="/ai/x/ { return 200; } #/"), "must start and end with '/'"),
        (replace(TEXT, path="/ai/$host/"), "must start and end with '/'"),
        (replace(TEXT, path="/ai/\n/"), "must start and end with '/'"),
        (replace(TEXT, path="/ai/../x/"), "no '//', '.' or '..' segments"),
        (replace(TEXT, path="//"), "no '//'"),
        (replace(TEXT, path="/.deployer/x/"), "is reserved for the gateway itself"),
        (replace(TEXT, port=0), "port must be a number between 1 and 65535 (got 0)"),
        (replace(TEXT, port=True), "port must be a number between 1 and 65535 (got True)"),
        (replace(TEXT, port="8801; include /etc/passwd"), "port must be a number"),  # type: ignore[arg-type]
        (replace(TEXT, port=LISTEN), "port 8080 is the gateway's own listen port"),
        (replace(TEXT, upstreams=()), "needs at least one upstream"),
        (replace(TEXT, upstreams=(70000,)), "upstream port must be a number between 1 and 65535 (got 70000)"),
        (replace(TEXT, upstreams=(("10.0.0.1;", 80),)), "upstream ('10.0.0.1;', 80) is not (host, port)"),
        (replace(TEXT, upstreams=(9801, 9801)), "upstream 127.0.0.1:9801 is listed twice"),
        (replace(TEXT, upstreams=(8801,)), "upstream 8801 is the route's own port (a loop)"),
        (replace(TEXT, upstreams=(LISTEN,)), "upstream 8080 is the gateway's own listen port"),
        (replace(TEXT, port=None, path=None), "needs a port or a path"),
        (replace(TEXT, revision=-1), "revision must be a number"),
        (replace(TEXT, revision="3"), "revision must be a number"),  # type: ignore[arg-type]
    ],
)
def test_every_value_for_nginx_syntax_is_allow_listed(route: Route, message: str) -> None:
    error = _rejected([route])
    assert message in str(error)
    if route.service in ("text-classify",):
        assert error.services == ("text-classify",)


def test_two_services_claiming_one_path_are_refused_naming_both() -> None:
    error = _rejected([TEXT, replace(IMAGE, path=TEXT.path)])
    assert str(error) == "services 'image-recognise' and 'text-classify' both claim gateway path /ai/text-classify/"
    assert error.services == ("image-recognise", "text-classify")


def test_two_services_claiming_one_port_are_refused_naming_both() -> None:
    error = _rejected([TEXT, replace(IMAGE, port=TEXT.port)])
    assert str(error) == "services 'image-recognise' and 'text-classify' both claim port 8801"


def test_a_sticky_port_that_is_another_services_upstream_is_refused() -> None:
    error = _rejected([TEXT, replace(IMAGE, upstreams=(8801,))])
    assert str(error) == "port 8801 is service 'text-classify''s gateway port and an upstream of 'image-recognise'"


def test_one_service_twice_is_refused() -> None:
    assert "'text-classify' is given twice" in str(_rejected([TEXT, replace(TEXT, port=8802)]))


def test_nested_paths_are_not_a_clash() -> None:
    check_routes([replace(TEXT, path="/ai/"), IMAGE], listen_port=LISTEN)


# ---------------------------------------------------------------- rendering


def test_rendering_is_deterministic_and_the_generation_follows_content(tmp_path: Path) -> None:
    text, generation = _render(tmp_path, [TEXT, IMAGE])
    again, same = _render(tmp_path, [IMAGE, TEXT])
    assert (again, same) == (text, generation)
    assert generation_of(text) == generation
    _, drained = _render(tmp_path, [TEXT, IMAGE], drain=3.0)
    _, gone = _render(tmp_path, [TEXT])
    assert len({generation, drained, gone}) == 3
    # A slot switch (another upstream, another revision) changes only the inner nginx's config: the
    # client-facing one, holding the clients' connections, is not reloaded by a redeploy.
    switched = [replace(TEXT, upstreams=(9804,), revision=4), IMAGE]
    assert _render(tmp_path, switched) == (text, generation)
    inner, inner_generation = _render(tmp_path, [TEXT, IMAGE], inner=True)
    assert generation_of(inner) == inner_generation
    assert _render(tmp_path, switched, inner=True)[1] != inner_generation
    assert _render(tmp_path, [replace(TEXT, revision=4), IMAGE], inner=True)[1] != inner_generation


def test_the_config_holds_routes_marker_and_state_paths(tmp_path: Path) -> None:
    text, generation = _render(tmp_path, [TEXT, IMAGE])
    home = tmp_path / "state" / "gateway"
    for line in (f"pid {home}/nginx.pid;", f"error_log {home}/error.log warn;",
                 *(f"{kind}_temp_path {home}/temp/{folder};" for kind, folder in
                   (("client_body", "client_body"), ("proxy", "proxy"), ("fastcgi", "fastcgi"),
                    ("uwsgi", "uwsgi"), ("scgi", "scgi"))),
                 f"access_log {home}/access.log deployer_json;", "listen 127.0.0.1:18080;",
                 "listen 127.0.0.1:8801;", "upstream svc_text_classify {",
                 "server unix:inner/sockets/text-classify.sock;", "server unix:inner/sockets/image-recognise.sock;",
                 "location /ai/text-classify/ {", "proxy_pass http://svc_text_classify/;",
                 "proxy_pass http://svc_image_recognise;", "proxy_set_header X-Forwarded-Prefix /ai/text-classify;",
                 "set $deployer_service text-classify;", '"revision":"$upstream_http_x_deployer_revision"',
                 "proxy_hide_header X-Deployer-Revision;", "proxy_http_version 1.1;",
                 "worker_shutdown_timeout 10000ms;",
                 "location = /.deployer/generation {", f'return 200 "{generation}\\n";'):
        assert line in text, line
    for absent in ("9801", "9802", "keepalive", 'set $deployer_revision "3";'):  # slots and revisions: the inner's
        assert absent not in text, absent
    # The sticky port proxies the URI as it came: nothing to strip there.
    sticky = text[text.index("listen 127.0.0.1:8801;"):]
    assert "proxy_pass http://svc_text_classify;" in sticky and "X-Forwarded-Prefix" not in sticky
    assert text.count(f'return 200 "{generation}\\n";') == 2  # the listener and the sticky port

    inner, inner_generation = _render(tmp_path, [TEXT, IMAGE], inner=True)
    home = home / "inner"
    for line in (f"pid {home}/nginx.pid;", f"error_log {home}/error.log warn;", f"proxy_temp_path {home}/temp/proxy;",
                 "listen unix:control.sock;", f'return 200 "{inner_generation}\\n";',
                 "listen unix:sockets/text-classify.sock;", "server 127.0.0.1:9801 max_fails=1 fail_timeout=2s;",
                 "server 127.0.0.1:9802 max_fails=1", "server 127.0.0.1:9803 max_fails=1", "keepalive 16;",
                 'add_header X-Deployer-Revision "3" always;', 'add_header X-Deployer-Revision "" always;',
                 "proxy_next_upstream error timeout;", "proxy_set_header Host $http_host;", "access_log off;"):
        assert line in inner, line


def test_external_mode_renders_only_http_level_blocks(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d" / "deployer.conf"
    text, _ = _render(tmp_path, [TEXT], conf_path=conf, reload_command="true")
    assert "upstream svc_text_classify {" in text and "server {" in text
    for directive in ("pid ", "events {", "http {", "worker_processes", "_temp_path"):
        assert directive not in text


def test_an_edited_config_has_no_generation() -> None:
    assert generation_of(None) is None
    assert generation_of('return 200 "0123456789abcdef\\n";') is None


def test_a_broken_template_is_refused_naming_the_file(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates" / "nginx", templates / "nginx")
    routes = templates / "nginx" / "routes.conf.j2"
    routes.write_text(routes.read_text() + "{{ no_such_value }}\n")
    with pytest.raises(GatewayRejected, match=r"routes\.conf\.j2:\d+: 'no_such_value' is undefined"):
        _render(tmp_path, [TEXT], templates=templates)
    routes.write_text("{% if %}\n")
    with pytest.raises(GatewayRejected, match=r"routes.conf.j2:1: "):
        _render(tmp_path, [TEXT], templates=templates)
    routes.write_text("server { listen {{ listen }}; }\n")  # no marker: a change could never be confirmed
    with pytest.raises(GatewayRejected, match=r"must answer /\.deployer/generation"):
        _render(tmp_path, [TEXT], templates=templates)


def test_a_state_dir_nginx_syntax_cannot_hold_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GatewayRejected, match="cannot go into nginx syntax"):
        build_gateway(GatewayConfig(state_dir=tmp_path / "my state;", templates_dir=ROOT / "templates"))


def test_gateway_url_of_a_path_route(tmp_path: Path) -> None:
    gateway = build_gateway(_config(tmp_path))
    assert gateway.url(TEXT) == "http://127.0.0.1:18080/ai/text-classify/"
    assert gateway.url(replace(TEXT, path=None)) is None
    wildcard = build_gateway(replace(_config(tmp_path), listen="0.0.0.0:18081"))
    assert wildcard.url(TEXT) == "http://127.0.0.1:18081/ai/text-classify/"


# ---------------------------------------------------------------- nginx -t


def test_nginx_t_refusal_carries_nginxs_words_and_keeps_the_live_file(tmp_path: Path) -> None:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        unavailable("nginx not installed: apt-get install nginx (scripts/services.sh)")
    gateway = build_gateway(_config(tmp_path))
    backend = gateway.backend
    live = backend.live_file
    live.write_text("# the live config\n")
    table = check_routes([TEXT], listen_port=18080)
    rendered = backend.renderer.render(table)
    broken = replace(rendered, text=rendered.text.replace("proxy_connect_timeout 2s;",
                                                                "proxy_connect_timeout 2s;\n    bogus_directive on;"))
    with pytest.raises(GatewayRejected) as caught:
        backend.install(broken, live.read_text())
    message = str(caught.value)
    assert message.startswith('[emerg] unknown directive "bogus_directive" in ')
    line = broken.text.splitlines().index("    bogus_directive on;") + 1
    assert message.endswith(f"nginx.conf.candidate:{line}")
    assert "\n" not in message and "test failed" not in message
    assert live.read_text() == "# the live config\n"
    backend.install(rendered, live.read_text())  # a good one replaces the live file
    assert generation_of(live.read_text()) == rendered.generation


def test_route_table_type_is_plain_data() -> None:
    table = RouteTable((TEXT,))
    assert table.by_path == (TEXT,) and table.by_port == (TEXT,)
