"""Where artifact tests fetch from: a loopback HTTP(S) file server with Range support, and moto's S3 server.

The file server counts what it sent and can break a transfer off after N bytes (once), so
a test sees a resumed download for real. ``moto_s3`` starts ``moto_server`` (the dev extra
``moto[server]``) on a free loopback port for the session; without it a test skips (fails in CI).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import free_port

_RANGE = re.compile(r"bytes=(\d+)-$")
S3_KEYS = ("testing-access-key", "testing-secret-key")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Served:
    """What the file server saw: requests (path, Range header) and bytes of file content it sent."""

    requests: list[tuple[str, str | None]] = field(default_factory=list)
    sent: int = 0
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before breaking off (once)
    no_range: bool = False  # answer every request with the whole file (a server without Range support)
    pause: float = 0.0  # seconds between blocks of 64 KiB (a slow store)

    def reset(self) -> None:
        self.requests.clear()
        self.sent = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path
    served: Served

    def do_GET(self) -> None:
        asked = self.headers.get("Range")
        self.served.requests.append((self.path, asked))
        path = self.root / self.path.lstrip("/").split("?", 1)[0]
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        start = 0
        matched = _RANGE.match(asked or "")
        if matched and not self.served.no_range:
            start = int(matched.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cut = self.served.cut_after.pop(self.path, None)
        with path.open("rb") as handle:
            handle.seek(start)
            if cut is not None:
                self.wfile.write(handle.read(cut))
                self.wfile.flush()
                self.served.sent += cut
                self.close_connection = True
                self.connection.shutdown(2)  # the transfer breaks off mid-file
                return
            while block := handle.read(1 << 16 if self.served.pause else 1 << 20):
                self.wfile.write(block)
                self.served.sent += len(block)
                time.sleep(self.served.pause)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FileServer:
    """A threaded loopback file server over ``root``; ``context`` makes it HTTPS."""

    def __init__(self, root: Path, context: ssl.SSLContext | None = None) -> None:
        self.root = root
        self.served = Served()
        handler = type("Handler", (_Handler,), {"root": root, "served": self.served})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if context is not None:
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        scheme = "https" if context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def put(self, name: str, data: bytes) -> str:
        """Serve ``data`` at ``/name``; returns its URL."""
        (self.root / name).parent.mkdir(parents=True, exist_ok=True)
        (self.root / name).write_bytes(data)
        return f"{self.url}/{name}"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by the openssl CLI (the CA bundle is the certificate)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        from tests.conftest import unavailable

        unavailable("openssl is not installed")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([str(openssl), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str = S3_KEYS[0]
    secret_key: str = S3_KEYS[1]

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, config=Config(proxies={}))

    def put(self, bucket: str, key: str, data: bytes) -> str:
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=key, Body=data)
        return f"s3://{bucket}/{key}"


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port for the session (``moto[server]``, a dev extra)."""
    from tests.conftest import unavailable

    binary = Path(sys.executable).parent / "moto_server"
    if not binary.exists() and shutil.which("moto_server") is None:
        unavailable("moto_server is not installed (pip install 'moto[server]', a dev extra)")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEYS[0], "AWS_SECRET_ACCESS_KEY": S3_KEYS[1]}
    with log.open("wb") as handle:
        process = subprocess.Popen([str(binary if binary.exists() else "moto_server"), "-H", "127.0.0.1",
                                    "-p", str(port)], stdout=handle, stderr=subprocess.STDOUT, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=2, trust_env=False)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"moto_server did not start:\n{log.read_text()}") from None
                time.sleep(0.1)
        yield S3Server(endpoint)
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "served"
    root.mkdir()
    with FileServer(root) as server:
        yield server


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


