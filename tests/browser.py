"""A real headless Chromium for page tests, driven by its own command line.

``--dump-dom`` gives the DOM after load, ``--screenshot`` a PNG of the viewport.
No webdriver: each call is one short-lived browser with a fresh profile, no
network beyond the page itself, and a timeout. Missing chromium skips (fails in CI).
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.conftest import unavailable

Scheme = Literal["light", "dark"]
QUIET = ("--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic", "--no-first-run",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--hide-scrollbars",
         "--mute-audio")
# Blink's PreferredColorScheme enum: 0 dark, 1 light (what prefers-color-scheme reports).
_SCHEME = {"dark": "0", "light": "1"}


@dataclass(frozen=True)
class Browser:
    executable: str
    timeout: float = 30.0

    @classmethod
    def find(cls) -> Browser:
        for name in ("chromium", "chromium-browser"):
            path = shutil.which(name)
            if path:
                return cls(path)
        unavailable("chromium not installed: apt-get install chromium (scripts/browser-services.sh)")
        raise AssertionError("unreachable")

    def dump_dom(self, url: str, *, scheme: Scheme = "light") -> str:
        """The serialised DOM after the page loaded."""
        return self._run(url, "--dump-dom", _scheme(scheme))

    def screenshot(self, url: str, path: Path, *, width: int = 1280, height: int = 800, scheme: Scheme = "light",
                   scale: float = 1.0) -> Path:
        """A PNG of the first ``width`` x ``height`` CSS pixels of the page."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self._run(url, f"--screenshot={path}", f"--window-size={width},{height}",
                  f"--force-device-scale-factor={scale}", _scheme(scheme))
        assert path.is_file() and path.stat().st_size > 1000, f"chromium wrote no screenshot to {path}"
        return path

    def _run(self, url: str, *args: str) -> str:
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
            command = [self.executable, "--headless", *QUIET, f"--user-data-dir={profile}", *args, url]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"chromium did not finish within {self.timeout}s: {url}") from None
        if done.returncode != 0:
            raise AssertionError(f"chromium exited with {done.returncode} for {url}:\n{done.stderr[-2000:]}")
        return done.stdout



def _scheme(scheme: Scheme) -> str:
    """What ``prefers-color-scheme`` reports. (``scriptEnabled=false`` here breaks --dump-dom and
    --screenshot, which use script themselves: pages prove they need no JS by having none.)"""
    return f"--blink-settings=preferredColorScheme={_SCHEME[scheme]}"


def text_of(dom: str) -> str:
    """The visible text, roughly: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def find(pattern: str, text: str) -> str:
    """The first group of ``pattern`` in ``text``; the test fails when it is not there."""
    match = re.search(pattern, text, re.S)
    assert match, f"not on the page: {pattern}"
    return match.group(1)
