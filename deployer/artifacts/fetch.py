"""Reading an artifact's bytes from where its URL points: S3 (boto3) or HTTP(S) (httpx), from an offset.

Each fetcher opens a stream starting at ``offset`` (a Range request, so an interrupted
download resumes) and says whether the server honoured it. Library errors become
``ArtifactFetchError`` here, naming the URL; no key or token ever enters a message.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from deployer.errors import ArtifactFetchError

CHUNK = 1024 * 1024


class RangeRefused(Exception):
    """The server cannot start at the offset asked (HTTP 416): the download starts over."""


@dataclass
class Stream:
    """An open download: its chunks, whether it starts at the offset asked, and the whole file's size."""

    chunks: Iterator[bytes]
    resumed: bool
    total: int | None


class Fetcher(Protocol):
    def open(self, url: str, offset: int) -> contextlib.AbstractContextManager[Stream]:
        """The bytes of ``url`` from ``offset`` on (or from 0, ``resumed`` False, when the server ignores it)."""


@dataclass(frozen=True)
class FetchOptions:
    """``[artifacts]`` settings the fetchers need; keys already read from their secret files."""

    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    ca_bundle: Path | None = None
    timeout: float = 30.0  # seconds without a byte before a transfer counts as failed


class HttpFetcher:
    def __init__(self, options: FetchOptions) -> None:
        verify: ssl.SSLContext | bool = True
        if options.ca_bundle is not None:
            verify = ssl.create_default_context(cafile=str(options.ca_bundle))
        # trust_env=False: no proxy or netrc from the environment, like every other call deployer makes.
        self._client = httpx.Client(trust_env=False, verify=verify, follow_redirects=True,
                                    timeout=httpx.Timeout(options.timeout, connect=10))

    @contextlib.contextmanager
    def open(self, url: str, offset: int) -> Iterator[Stream]:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                if response.status_code == 416:
                    raise RangeRefused()
                if response.status_code not in (200, 206):
                    raise ArtifactFetchError(f"{url}: HTTP {response.status_code} {response.reason_phrase}")
                resumed = response.status_code == 206
                length = response.headers.get("content-length")
                total = int(length) + (offset if resumed else 0) if length and length.isdigit() else None
                yield Stream(_http_chunks(response, url), resumed, total)
        except httpx.HTTPError as exc:
            raise ArtifactFetchError(f"{url}: {type(exc).__name__}: {exc or 'no answer'}") from None


def _http_chunks(response: httpx.Response, url: str) -> Iterator[bytes]:
    try:
        yield from response.iter_bytes()  # as they arrive: a transfer that breaks off keeps what came
    except httpx.HTTPError as exc:
        raise ArtifactFetchError(f"{url}: the transfer broke off: {type(exc).__name__}: {exc}") from None


class S3Fetcher:
    """S3 and S3-compatible stores (MinIO, Ceph, moto): endpoint, region and keys from ``[artifacts]``."""

    def __init__(self, options: FetchOptions) -> None:
        self._options = options
        self._client: Any = None
        self._guard = threading.Lock()

    def _connected(self) -> Any:
        with self._guard:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> Any:
        # Imported at first use: boto3 takes a while to import, and most daemons never name s3://.
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        options = self._options
        keyed = bool(options.s3_access_key and options.s3_secret_key)
        config = Config(signature_version=None if keyed else UNSIGNED, connect_timeout=10,
                        read_timeout=options.timeout, retries={"max_attempts": 2, "mode": "standard"},
                        s3={"addressing_style": "path"}, proxies={})
        # Like trust_env=False for httpx: keys given (or none, unsigned), no proxy (proxies={}) and the CA
        # bundle given (verify=True, not None), so botocore reads none of them from the environment.
        return boto3.session.Session().client(
            "s3", endpoint_url=options.s3_endpoint or None, region_name=options.s3_region or "us-east-1",
            aws_access_key_id=options.s3_access_key if keyed else None,
            aws_secret_access_key=options.s3_secret_key if keyed else None, config=config,
            verify=str(options.ca_bundle) if options.ca_bundle is not None else True)

    @contextlib.contextmanager
    def open(self, url: str, offset: int) -> Iterator[Stream]:
        from botocore.exceptions import BotoCoreError, ClientError

        parts = urlsplit(url)
        bucket, key = parts.netloc, parts.path.lstrip("/")
        try:
            asked = {"Range": f"bytes={offset}-"} if offset else {}
            answer = self._connected().get_object(Bucket=bucket, Key=key, **asked)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") == "InvalidRange":
                raise RangeRefused() from None
            said = f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
            raise ArtifactFetchError(f"{url}: {said}") from None
        except BotoCoreError as exc:
            raise ArtifactFetchError(f"{url}: {exc}") from None
        body = answer["Body"]
        resumed = "ContentRange" in answer
        total = int(answer["ContentLength"]) + (offset if resumed else 0)
        try:
            yield Stream(_s3_chunks(body, url), resumed, total)
        finally:
            body.close()


def _s3_chunks(body: Any, url: str) -> Iterator[bytes]:
    from botocore.exceptions import BotoCoreError

    try:
        yield from body.iter_chunks(CHUNK)
    except (BotoCoreError, OSError) as exc:
        raise ArtifactFetchError(f"{url}: the transfer broke off: {exc}") from None


class Fetchers:
    """The fetcher for a URL's scheme; S3's client is made at first use."""

    def __init__(self, options: FetchOptions) -> None:
        self._http = HttpFetcher(options)
        self._s3 = S3Fetcher(options)

    def for_url(self, url: str) -> Fetcher:
        return self._s3 if url.startswith("s3://") else self._http
