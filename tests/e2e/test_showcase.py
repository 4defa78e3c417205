"""The showcase pages end to end: real daemon, real supervisord, real headless Chromium.

The two sentiment classifiers of ``test_demo`` (``lexicon`` and ``counter``, whose
answer carries ``<script>alert(1)</script>``) form the group ``sentiment``; a third
service, ``oddball`` (alone in group ``oddities``), misbehaves on purpose: PNG bytes
labelled text/html, an HTML page, a JSON answer with pictures (one fake), several
megabytes, a 500, a hang, and an audio input sent as a file. Its gate fails, and its
answers are still shown. Screenshots go to ``test-output/showcase-*.png``.

One daemon serves the module, but no test relies on another having run: a test that
reads lexicon's answers first puts its original code back (``lexicon_as_committed``),
and the test that plants bad rows in the database removes them again.
"""

from __future__ import annotations

import base64
import contextlib
import html
import http.client
import io
import json
import re
import sqlite3
import struct
import wave
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer.store import Store
from tests.browser import Browser, find, text_of
from tests.e2e.test_demo import files, settled
from tests.helpers import ROOT, GitRepo, free_port, port_window, start_daemon, stop_supervisord

OUTPUT = ROOT / "test-output"
HOSTILE = "<script>alert(1)</script>"
TOKEN = "showcase-token"


def png(width: int = 160, height: int = 96) -> bytes:
    """A real PNG: two colour bands, so a screenshot shows it was decoded."""
    rows = b"".join(b"\x00" + (b"\xd0\x30\x30" * (width // 2) + b"\x30\x60\xd0" * (width - width // 2))
                    for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(8000)
        out.writeframes(bytes(128 + (40 if (i // 9) % 2 else -40) for i in range(4000)))
    return buffer.getvalue()


PICTURE = base64.b64encode(png()).decode()
ODDBALL = '''\
"""A model service that misbehaves in every way a showcase must survive."""
import argparse, base64, json, pathlib, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = pathlib.Path(__file__).parent
PICTURE = base64.b64encode((HERE / "pixel.png").read_bytes()).decode()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self._send(200, "application/json", b'{"status": "ok", "name": "oddball"}')

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Type", "").startswith("multipart/"):
            return self._json({"transcript": "beep beep", "label": "tone", "scores": {"tone": 0.8, "speech": 0.2}})
        mode = json.loads(body)["mode"]
        if mode == "png":  # image bytes under a misleading type
            return self._send(200, "text/html", (HERE / "pixel.png").read_bytes())
        if mode == "html":
            return self._send(200, "text/html", b"<html><body><script>alert(2)</script>"
                                                b"<img src=x onerror=alert(3)></body></html>")
        if mode == "picture":
            return self._json({"label": "cat", "scores": [{"label": "cat", "score": 0.91},
                                                          {"label": "dog", "score": 0.09}],
                               "image": "data:image/png;base64," + PICTURE, "mask": {"image_base64": PICTURE},
                               "fake": {"image": base64.b64encode(b"<script>alert(4)</script>").decode()},
                               "source": "https://images.example.com/cat.png", "icon": "javascript:alert(5)"})
        if mode == "big":
            return self._json({"label": "huge", "filler": "x" * 3_000_000})
        if mode == "error":
            return self._send(500, "application/json", b'{"error": "model exploded"}')
        time.sleep(6)  # "slow": longer than the demo timeout
        self._json({"label": "late"})

    def _json(self, data):
        self._send(200, "application/json", json.dumps(data).encode())

    def _send(self, status, kind, body):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int)
    port = parser.parse_args().port
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''
MODES = ("png", "html", "picture", "big", "error", "slow")


def oddball() -> str:
    demos = "".join(f"      - {{name: {mode}, input: demo/{mode}.json}}\n" for mode in MODES)
    return f"""  - name: oddball
    path: oddball
    command: python server.py --port ${{PORT}}
    group: oddities
    health: {{path: /health, timeout: 20}}
    demo:
{demos}      - {{name: tone, file: demo/tone.wav}}
"""


def tree() -> dict[str, str | bytes | None]:
    content = files()
    content["service.yaml"] = f"{content['service.yaml']}{oddball()}"
    content.update({f"oddball/demo/{mode}.json": json.dumps({"mode": mode}) for mode in MODES})
    content.update({"oddball/server.py": ODDBALL, "oddball/pixel.png": png(), "oddball/demo/tone.wav": wav()})
    return content


@pytest.fixture(scope="module")
def browser() -> Browser:
    return Browser.find()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, browser: Browser) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("showcase")
    repo = GitRepo.create(root / "repo.git", root / "work")
    repo.commit(tree(), "two classifiers and an oddball")
    port = free_port()
    first = port_window()
    (root / "deployer.toml").write_text(f"""
[server]
listen = "127.0.0.1:{port}"
[[sources]]
url = "repo.git"
name = "models"
[reconcile]
interval = 2
poll_interval = 3600
[ports]
range = "{first}-{first + 9}"
[paths]
state_dir = "{root / 'state'}"
[demo]
timeout = 2
""")
    daemon = start_daemon(root / "deployer.toml", root / "state", env={"DEPLOYER_API_TOKEN": TOKEN})
    try:
        world = {"root": root, "repo": repo, "daemon": daemon, "state": root / "state"}
        for name in ("lexicon", "counter", "oddball"):
            settled(world, name)
        yield world
    finally:
        daemon.stop()
        stop_supervisord(root / "state")


# -- reading pages ----------------------------------------------------------




def rows(dom: str) -> dict[str, str]:
    """The comparison table's rows by demo name, as raw HTML."""
    table = dom[dom.index('<table class="compare"'):dom.index("<!-- end of comparison -->")]
    return {part.split('"', 1)[0]: part for part in table.split('<tr id="row-')[1:]}


def cells(row: str) -> dict[str, str]:
    """A comparison row's answer cells by column (service name or 'rev N'), as raw HTML."""
    parts = row.split('<td data-column="')[1:]
    return {part.split('"', 1)[0]: part.split(">", 1)[1] for part in parts}


def answers(dom: str) -> dict[str, str]:
    """The showcase's latest answers by demo name, as raw HTML."""
    parts = re.split(r'<div class="demo card" id="demo-', dom)[1:]
    return {part.split('"', 1)[0]: part for part in parts}


def no_script(dom: str) -> None:
    assert "<script" not in dom.lower(), "a script element reached the page"


def shot(browser: Browser, url: str, name: str, **options: Any) -> Path:
    return browser.screenshot(url, OUTPUT / f"showcase-{name}.png", **options)


def raw_get(base: str, path: str) -> tuple[int, bytes]:
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def running(world: dict[str, Any], name: str) -> int:
    detail = world["daemon"].service(name)
    assert detail and detail["running_revision"], detail
    return int(detail["running_revision"])


def reconcile(world: dict[str, Any]) -> None:
    requested = world["daemon"].post("/api/reconcile", b"{}", {"Authorization": f"Bearer {TOKEN}"})
    assert requested.status_code == 202, requested.text


def lexicon_as_committed(world: dict[str, Any]) -> int:
    """lexicon running its original, negation-aware code (a test changes it); its running revision."""
    original = tree()["lexicon/server.py"]
    assert isinstance(original, str)
    previous = settled(world, "lexicon")["attempts"][0]["id"]
    if (world["repo"].work / "lexicon" / "server.py").read_text() != original:
        world["repo"].commit({"lexicon/server.py": original}, "lexicon: English negations back")
        reconcile(world)
        settled(world, "lexicon", after=previous)
    return running(world, "lexicon")


# -- the tests --------------------------------------------------------------


def test_group_page_shows_both_services_for_each_input(world: dict[str, Any], browser: Browser) -> None:
    lexicon_as_committed(world)
    settled(world, "counter")
    url = world["daemon"].url + "/groups/sentiment"
    dom = browser.dump_dom(url)
    no_script(dom)
    heads = text_of(find(r'<thead>(.*?)</thead>', dom))
    assert "lexicon" in heads and "counter" in heads and "running" in heads, heads
    expected = {"not-bad": ("positive", "negative"), "mixed": ("neutral", "neutral")}  # negations differ
    table = rows(dom)
    assert list(table) == ["not-bad", "mixed"], list(table)  # in the manifest's order
    for demo, (lexicon, counter) in expected.items():
        row = table[demo]
        by_column = {column: text_of(cell) for column, cell in cells(row).items()}
        assert set(by_column) == {"lexicon", "counter"}, by_column
        for column, label in (("lexicon", lexicon), ("counter", counter)):
            assert by_column[column].startswith("ok HTTP 200 "), by_column[column]
            assert re.search(r"HTTP 200 \d+ ms " + label + " ", by_column[column]), (column, by_column[column])
        assert '"text":' in html.unescape(row.split('<td data-column="')[0])  # the input, beside them
    lexicon_cell = cells(table["not-bad"])["lexicon"]
    bars = re.findall(r'<tr class="(chosen|)"><td class="name">(\w+)</td>\s*<td class="bar">'
                      r'<span style="width: (\d+)%;?">', lexicon_cell)
    assert [name for _, name, _ in bars] == ["positive", "neutral", "negative"] and bars[0][0] == "chosen", bars
    assert int(bars[0][2]) > int(bars[1][2]), bars
    shot(browser, url, "group", height=900)
    shot(browser, url, "group-dark", height=900, scheme="dark")
    shot(browser, url, "group-phone", width=390, height=1400)


def test_a_script_in_a_model_output_is_shown_as_text(world: dict[str, Any], browser: Browser) -> None:
    for path in ("/groups/sentiment", "/services/counter/showcase", "/services/counter"):
        dom = browser.dump_dom(world["daemon"].url + path)
        no_script(dom)
        assert html.escape(HOSTILE, quote=False) in dom, path  # in the DOM as text
        assert HOSTILE in text_of(dom), path
    response = world["daemon"].get("/groups/sentiment")
    assert "script-src" not in response.headers["content-security-policy"]  # and no script may run at all
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_service_page_and_showcase_show_input_beside_output(world: dict[str, Any], browser: Browser) -> None:
    daemon = world["daemon"]
    revision = lexicon_as_committed(world)
    page = browser.dump_dom(daemon.url + "/services/lexicon")
    shown = answers(page)
    assert set(shown) == {"not-bad", "mixed"}, list(shown)
    not_bad = text_of(shown["not-bad"])
    assert "not bad at all, never disappointing" in not_bad and "positive" in not_bad, not_bad
    assert f'href="/services/lexicon/demo-input/{revision}/not-bad"' in shown["not-bad"]
    assert 'href="/groups/sentiment"' in page and 'href="/services/lexicon/showcase"' in page
    overview = browser.dump_dom(daemon.url + "/")
    assert 'href="/groups/sentiment"' in overview and 'href="/groups/oddities"' in overview
    shot(browser, daemon.url + "/services/lexicon", "service", height=1100)


def test_the_input_file_route_serves_the_demo_input(world: dict[str, Any]) -> None:
    daemon, revision = world["daemon"], running(world, "lexicon")
    response = daemon.get(f"/services/lexicon/demo-input/{revision}/not-bad")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.json() == {"text": "not bad at all, never disappointing"}
    assert daemon.get(f"/services/lexicon/demo-input/{revision}/nope").status_code == 404
    assert daemon.get(f"/services/counter/demo-input/{revision}/not-bad").status_code == 404  # not counter's
    assert daemon.get("/services/lexicon/demo-input/x/not-bad").status_code == 404


def test_oddball_answers_are_shown_safely(world: dict[str, Any], browser: Browser) -> None:
    daemon = world["daemon"]
    detail = settled(world, "oddball")
    assert detail["attempts"][0]["reason"] == "DemoFailed", detail
    url = daemon.url + "/services/oddball/showcase"
    dom = browser.dump_dom(url)
    no_script(dom)
    shown = answers(dom)
    assert set(shown) == {*MODES, "tone"}, list(shown)

    image = find(r'<div class="binary">\s*<img src="(/services/oddball/demo-output/\d+)"', shown["png"])
    assert "the service said text/html" in text_of(shown["png"])
    served = daemon.get(image)
    assert served.status_code == 200 and served.headers["content-type"] == "image/png", served.headers
    assert served.headers["x-content-type-options"] == "nosniff" and served.headers["content-disposition"] == "inline"
    assert served.content == png()

    page = shown["html"]
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page and "onerror=alert(3)" in html.unescape(page)
    assert "not JSON" in text_of(page) and "<img src=\"x\"" not in page

    picture = shown["picture"]
    assert picture.count('<img src="data:image/png;base64,') == 2  # image and mask; the fake one is not an image
    assert PICTURE in picture and base64.b64encode(b"<script>").decode()[:8] in html.unescape(picture)
    assert 'href="https://images.example.com/cat.png"' in picture and "(not fetched)" in text_of(picture)
    assert 'href="javascript:' not in picture and "cat 0.910" in text_of(picture)

    assert "truncated" in text_of(shown["big"]) and "more characters" in text_of(shown["big"])
    assert "expected HTTP 200, got 500" in text_of(shown["error"]) and "HTTP 500" in text_of(shown["error"])
    assert "no answer within 2s" in text_of(shown["slow"]) and "no answer" in text_of(shown["slow"])

    revision = detail["attempts"][0]["revision"]
    tone = shown["tone"]
    assert f'<audio controls="" preload="metadata" src="/services/oddball/demo-input/{revision}/tone">' in tone
    assert "beep beep" in html.unescape(tone)
    audio = daemon.get(f"/services/oddball/demo-input/{revision}/tone")
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav" and audio.content == wav()
    shot(browser, url, "oddball", height=2600)


def test_a_group_of_one_says_so(world: dict[str, Any], browser: Browser) -> None:
    dom = browser.dump_dom(world["daemon"].url + "/groups/oddities")
    assert "only one service in this group" in text_of(dom)
    missing = world["daemon"].get("/groups/no-such-group")
    assert missing.status_code == 404 and "No group named" in missing.text


def test_revision_comparison_shows_old_and_new_outputs(world: dict[str, Any], browser: Browser) -> None:
    daemon, repo = world["daemon"], world["repo"]
    before = lexicon_as_committed(world)
    attempts = daemon.service("lexicon")["attempts"]  # type: ignore[index]
    server = repo.work / "lexicon" / "server.py"
    negation_blind = re.sub(r"NEGATIONS = \{.*?\}\n", "NEGATIONS: set[str] = set()\n", server.read_text())
    assert "NEGATIONS: set[str] = set()" in negation_blind
    repo.commit({"lexicon/server.py": negation_blind}, "lexicon: drop English negations")
    reconcile(world)
    settled(world, "lexicon", after=attempts[0]["id"])
    after = running(world, "lexicon")
    assert after != before

    url = daemon.url + "/services/lexicon/showcase"
    dom = browser.dump_dom(url)
    no_script(dom)
    heads = text_of(find(r'<table class="compare"[^>]*>\s*<thead>(.*?)</thead>', dom))
    assert heads.index(f"rev {after}") < heads.index(f"rev {before}"), heads  # newest first
    assert "running" in heads and "code changed" in heads and "drop English negations" in heads, heads
    row = cells(rows(dom)["not-bad"])
    new, old = text_of(row[f"rev {after}"]), text_of(row[f"rev {before}"])
    assert re.search(r"HTTP 200 \d+ ms negative ", new), new
    assert re.search(r"HTTP 200 \d+ ms positive ", old), old
    shot(browser, url, "revisions", height=1300)


def test_demo_output_refuses_paths_outside_its_folder(world: dict[str, Any]) -> None:
    daemon, state, root = world["daemon"], world["state"], world["root"]
    detail = settled(world, "oddball")
    for trick in ("..%2F..%2Fdeployer.toml", "..", "../../../deployer.toml", "1%2F..%2F..%2Fdeployer.toml",
                  "%2e%2e", "-1", "1e3", "0x1"):
        status, body = raw_get(daemon.url, f"/services/oddball/demo-output/{trick}")  # sent as is, not normalised
        assert status == 404 and b"[server]" not in body, trick
    png_id = int(find(r"/demo-output/(\d+)", daemon.get("/services/oddball/showcase").text))
    assert daemon.get(f"/services/lexicon/demo-output/{png_id}").status_code == 404  # another service's answer

    evil = state / "demo" / "oddball" / "evil.png"
    evil.symlink_to(root / "deployer.toml")
    planted: dict[str, int] = {}
    try:
        store = Store(f"sqlite:///{state / 'deployer.db'}")
        try:  # rows pointing outside <state_dir>/demo/, as a corrupted or tampered database might hold
            for index, body_file in enumerate(("demo/../deployer.db", str(root / "deployer.toml"),
                                               "demo/oddball/evil.png", "demo", "demo/oddball")):
                planted[body_file] = store.demos.record(
                    "oddball", detail["attempts"][0]["revision"], None, name=f"planted-{index}", ok=True,
                    status=200, latency_ms=1.0, content_type="image/png", text=None, body_file=body_file,
                    truncated=False, problems="")
        finally:
            store.close()
        for body_file, result_id in planted.items():
            response = daemon.get(f"/services/oddball/demo-output/{result_id}")
            assert response.status_code == 404 and "[server]" not in response.text, body_file
        page = daemon.get("/services/oddball/showcase")
        assert page.status_code == 200 and page.text.count("the stored file is gone") == len(planted)
        png_now = int(find(r"/demo-output/(\d+)", page.text))  # the newest answer (a retry may have replaced it)
        assert daemon.get(f"/services/oddball/demo-output/{png_now}").status_code == 200, (png_id, png_now)
    finally:  # planted rows would be among oddball's answers for every later test
        evil.unlink(missing_ok=True)
        with contextlib.closing(sqlite3.connect(state / "deployer.db", timeout=30)) as database, database:
            database.executemany("DELETE FROM demo_results WHERE id = ?", [(row,) for row in planted.values()])
