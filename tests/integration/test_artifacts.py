"""Artifacts fetched for real: a loopback HTTP(S) file server with Range support and moto's S3 server.

Each test drives ``Artifacts.place`` (what the rollout's artifacts step calls) against a fresh
cache and checks the bytes at the path, what was fetched, and what a failure says.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from deployer.artifacts import Artifacts, ContentCache, Fetchers, FetchOptions
from deployer.errors import ArtifactFetchError, Reason
from deployer.model.manifest import ArtifactSpec
from tests.artifact_servers import FileServer, S3Server, self_signed, sha256, tls_context
from tests.helpers import free_port, wait_for

WEIGHTS = os.urandom(300_000)


def artifacts(root: Path, *, budget: int = 10**9, **options: object) -> Artifacts:
    return Artifacts(ContentCache(root / "cache", budget=budget), Fetchers(FetchOptions(**options)))  # type: ignore[arg-type]


def into(folder: Path) -> Path:
    """A service folder (a checkout's always exists before its artifacts are placed)."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def spec(url: str, data: bytes, path: str = "models/weights.bin") -> ArtifactSpec:
    return ArtifactSpec(url=url, sha256=sha256(data), path=path)


def test_http_artifact_arrives_read_only_and_a_second_place_fetches_nothing(
        tmp_path: Path, file_server: FileServer) -> None:
    store = artifacts(tmp_path)
    entry = spec(file_server.put("bert/v3.bin", WEIGHTS), WEIGHTS)
    first = store.place("a", [entry], into(tmp_path / "a"))
    placed = tmp_path / "a" / "models" / "weights.bin"
    assert placed.read_bytes() == WEIGHTS
    assert placed.stat().st_mode & 0o777 == 0o444
    assert placed.stat().st_ino == store.cache.object(entry.sha256).stat().st_ino  # a hard link, not a copy
    assert (first.fetched, first.total) == (len(WEIGHTS), len(WEIGHTS))
    file_server.served.reset()
    again = store.place("b", [entry], into(tmp_path / "b"))  # another service, same digest
    assert (again.fetched, file_server.served.sent, file_server.served.requests) == (0, 0, [])
    assert again.summary() == "artifacts: 1 file, 0 B fetched (cached)"
    assert (tmp_path / "b" / "models" / "weights.bin").read_bytes() == WEIGHTS
    assert store.cache.use().objects == 1


def test_s3_artifact_arrives_with_keys_from_the_settings(tmp_path: Path, moto_s3: S3Server) -> None:
    url = moto_s3.put("models", "bert/v3.bin", WEIGHTS)
    store = artifacts(tmp_path, s3_endpoint=moto_s3.endpoint, s3_access_key=moto_s3.access_key,
                      s3_secret_key=moto_s3.secret_key)
    done = store.place("a", [spec(url, WEIGHTS)], into(tmp_path / "a"))
    assert (tmp_path / "a" / "models" / "weights.bin").read_bytes() == WEIGHTS
    assert done.fetched == len(WEIGHTS)


def test_a_missing_s3_object_fails_naming_the_url(tmp_path: Path, moto_s3: S3Server) -> None:
    moto_s3.put("models", "other.bin", b"x")
    store = artifacts(tmp_path, s3_endpoint=moto_s3.endpoint, s3_access_key=moto_s3.access_key,
                      s3_secret_key=moto_s3.secret_key)
    with pytest.raises(ArtifactFetchError) as failed:
        store.place("a", [spec("s3://models/missing.bin", WEIGHTS)], into(tmp_path / "a"))
    assert "s3://models/missing.bin" in str(failed.value) and "NoSuchKey" in str(failed.value)
    assert failed.value.reason is Reason.ARTIFACT_FETCH_FAILED


def test_an_s3_download_resumes_with_a_ranged_get(tmp_path: Path, moto_s3: S3Server) -> None:
    url = moto_s3.put("models", "bert/resumed.bin", WEIGHTS)
    store = artifacts(tmp_path, s3_endpoint=moto_s3.endpoint, s3_access_key=moto_s3.access_key,
                      s3_secret_key=moto_s3.secret_key)
    store.cache.partial(sha256(WEIGHTS)).write_bytes(WEIGHTS[:100_000])
    done = store.place("a", [spec(url, WEIGHTS)], into(tmp_path / "a"))
    assert (done.fetched, done.resumed) == (len(WEIGHTS) - 100_000, 1)
    assert (tmp_path / "a" / "models" / "weights.bin").read_bytes() == WEIGHTS


def test_a_missing_http_file_fails_with_its_status(tmp_path: Path, file_server: FileServer) -> None:
    with pytest.raises(ArtifactFetchError, match=r"/gone\.bin: HTTP 404 Not Found"):
        artifacts(tmp_path).place("a", [spec(f"{file_server.url}/gone.bin", WEIGHTS)], into(tmp_path / "a"))


def test_a_wrong_digest_fails_and_places_nothing(tmp_path: Path, file_server: FileServer) -> None:
    url = file_server.put("bert.bin", WEIGHTS)
    wanted = sha256(b"other bytes")
    store = artifacts(tmp_path)
    with pytest.raises(ArtifactFetchError) as failed:
        store.place("a", [ArtifactSpec(url=url, sha256=wanted, path="bert.bin")], into(tmp_path / "a"))
    message = str(failed.value)
    assert url in message and f"expected {wanted}" in message and f"got {sha256(WEIGHTS)}" in message
    assert not (tmp_path / "a" / "bert.bin").exists()
    assert store.cache.use().objects == 0 and not store.cache.partial(wanted).exists()


def test_an_unreachable_store_fails_clearly(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/bert.bin"  # nothing listens there
    with pytest.raises(ArtifactFetchError, match=r"127\.0\.0\.1.*/bert\.bin: ConnectError"):
        artifacts(tmp_path, timeout=5).place("a", [spec(url, WEIGHTS)], into(tmp_path / "a"))
    s3 = artifacts(tmp_path, s3_endpoint=f"http://127.0.0.1:{free_port()}", timeout=5)
    with pytest.raises(ArtifactFetchError, match=r"s3://models/bert\.bin: Could not connect"):
        s3.place("a", [spec("s3://models/bert.bin", WEIGHTS)], into(tmp_path / "a"))


def test_an_interrupted_download_resumes_where_it_broke_off(tmp_path: Path, file_server: FileServer) -> None:
    url = file_server.put("bert.bin", WEIGHTS)
    file_server.served.cut_after["/bert.bin"] = 100_000
    store = artifacts(tmp_path)
    done = store.place("a", [spec(url, WEIGHTS)], into(tmp_path / "a"))
    assert (tmp_path / "a" / "models" / "weights.bin").read_bytes() == WEIGHTS
    assert file_server.served.requests == [("/bert.bin", None), ("/bert.bin", "bytes=100000-")]
    assert file_server.served.sent == len(WEIGHTS)  # nothing fetched twice
    assert (done.resumed, done.fetched) == (1, len(WEIGHTS))


def test_a_partial_file_left_by_an_earlier_attempt_is_resumed(tmp_path: Path, file_server: FileServer) -> None:
    url = file_server.put("bert.bin", WEIGHTS)
    store = artifacts(tmp_path)
    store.cache.partial(sha256(WEIGHTS)).write_bytes(WEIGHTS[:120_000])  # a daemon killed mid-download
    done = store.place("a", [spec(url, WEIGHTS)], into(tmp_path / "a"))
    assert file_server.served.requests == [("/bert.bin", "bytes=120000-")]
    assert (done.fetched, done.resumed) == (len(WEIGHTS) - 120_000, 1)
    assert store.cache.object(sha256(WEIGHTS)).read_bytes() == WEIGHTS


def test_a_partial_file_nobody_resumes_is_dropped_after_a_day(tmp_path: Path) -> None:
    cache = artifacts(tmp_path).cache
    for name, age in (("a" * 64, 2 * 24 * 3600), ("b" * 64, 60)):
        cache.partial(name).write_bytes(b"half a file")
        os.utime(cache.partial(name), (time.time() - age, time.time() - age))
    assert cache.drop_stale_partials() == ["a" * 64]
    assert cache.partial("b" * 64).exists()


def test_a_server_without_range_support_sends_the_whole_file_again(tmp_path: Path, file_server: FileServer) -> None:
    url = file_server.put("bert.bin", WEIGHTS)
    file_server.served.no_range = True
    store = artifacts(tmp_path)
    store.cache.partial(sha256(WEIGHTS)).write_bytes(b"garbage that must not stay at the front")
    store.place("a", [spec(url, WEIGHTS)], into(tmp_path / "a"))
    assert store.cache.object(sha256(WEIGHTS)).read_bytes() == WEIGHTS


def test_two_services_wanting_one_digest_at_once_download_it_once(tmp_path: Path, file_server: FileServer) -> None:
    entry = spec(file_server.put("bert.bin", WEIGHTS), WEIGHTS)
    store = artifacts(tmp_path)
    results = {}

    def deploy(name: str) -> None:
        results[name] = store.place(name, [entry], into(tmp_path / name))

    threads = [threading.Thread(target=deploy, args=(name,)) for name in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(result.fetched for result in results.values()) == [0, 0, len(WEIGHTS)]
    assert len(file_server.served.requests) == 1


def test_a_transfer_under_way_is_shown_with_its_bytes(tmp_path: Path, file_server: FileServer) -> None:
    entry = spec(file_server.put("bert.bin", WEIGHTS), WEIGHTS)
    file_server.served.pause = 0.05  # about 0.25 s for the file
    store = artifacts(tmp_path)
    placing = threading.Thread(target=store.place, args=("bert", [entry], into(tmp_path / "a")))
    placing.start()
    seen = wait_for(lambda: [transfer for transfer in store.use().fetching if 0 < transfer.fetched < len(WEIGHTS)],
                    10, "a transfer under way")
    placing.join(10)
    assert (seen[0].service, seen[0].expected) == ("bert", len(WEIGHTS))
    assert store.use().fetching == ()  # done: nothing shown any more


def test_https_with_the_configured_ca_bundle(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    root = tmp_path / "served"
    root.mkdir()
    with FileServer(root, tls_context(cert, key)) as server:
        entry = spec(server.put("bert.bin", WEIGHTS), WEIGHTS)
        with pytest.raises(ArtifactFetchError, match="CERTIFICATE_VERIFY_FAILED"):
            artifacts(tmp_path / "untrusting").place("a", [entry], into(tmp_path / "a"))
        artifacts(tmp_path, ca_bundle=cert).place("a", [entry], into(tmp_path / "a"))
    assert (tmp_path / "a" / "models" / "weights.bin").read_bytes() == WEIGHTS


def test_a_path_through_a_symlink_out_of_the_folder_is_refused(tmp_path: Path, file_server: FileServer) -> None:
    (tmp_path / "outside").mkdir()
    into(tmp_path / "a")
    (tmp_path / "a" / "models").symlink_to(tmp_path / "outside")
    with pytest.raises(ArtifactFetchError, match="leads outside"):
        artifacts(tmp_path).place("a", [spec(file_server.put("b.bin", WEIGHTS), WEIGHTS)], into(tmp_path / "a"))
    assert list((tmp_path / "outside").iterdir()) == []


def test_pruning_keeps_the_cache_within_its_budget_and_spares_what_is_needed(
        tmp_path: Path, file_server: FileServer) -> None:
    store = artifacts(tmp_path, budget=250_000)
    blobs = [os.urandom(100_000) for _ in range(4)]
    for index, blob in enumerate(blobs):
        store.place("a", [spec(file_server.put(f"{index}.bin", blob), blob, f"{index}.bin")], into(tmp_path / "a"))
        os.utime(store.cache.object(sha256(blob)), (1000 + index, 1000 + index))  # used in this order
    needed = {sha256(blobs[0])}  # the oldest, but a kept revision names it
    removed = store.cache.prune(needed)
    assert removed == [sha256(blobs[1]), sha256(blobs[2])]
    use = store.cache.use()
    assert (use.objects, use.bytes) == (2, 200_000) and use.bytes <= use.budget
    assert sorted(path.name for path in (tmp_path / "cache" / "sha256").iterdir()) == sorted(
        [sha256(blobs[0]), sha256(blobs[3])])
    assert ContentCache(tmp_path / "cache", budget=1).use().bytes == 200_000  # the tally survives a restart
