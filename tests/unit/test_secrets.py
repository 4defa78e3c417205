"""Service secrets: per-service scope before shared, one clear message, a length rule that keeps
masking from garbling ordinary text, and supervisor faults shown as written."""

from __future__ import annotations

import xmlrpc.client
from pathlib import Path

import pytest
from supervisor.xmlrpc import Faults

from deployer.runtimes.supervisor.program import redact
from deployer.runtimes.supervisor.rpc import SupervisorRpc
from deployer.secrets import MASK, MIN_LENGTH, SecretMissing, SecretStore


def put(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")


def test_a_service_own_secret_comes_before_the_shared_one(tmp_path: Path) -> None:
    put(tmp_path / "API_KEY", "shared-key-value")
    put(tmp_path / "alpha" / "API_KEY", "alpha-only-value")
    store = SecretStore(tmp_path)
    assert store.resolve(["API_KEY"], service="alpha") == {"API_KEY": "alpha-only-value"}
    assert store.resolve(["API_KEY"], service="beta") == {"API_KEY": "shared-key-value"}
    # both values are masked, the per-service one included
    assert store.mask("a=alpha-only-value b=shared-key-value") == f"a={MASK} b={MASK}"


def test_the_missing_message_names_both_places_once(tmp_path: Path) -> None:
    with pytest.raises(SecretMissing) as caught:
        SecretStore(tmp_path).resolve(["HF_TOKEN", "API_KEY"], service="alpha")
    message = str(caught.value)
    assert message.startswith("alpha: secret HF_TOKEN, API_KEY not set")
    assert f"{tmp_path}/alpha/NAME" in message and f"{tmp_path}/NAME (shared)" in message
    # the recorder adds what happens next; the error itself must not say it too
    assert "keeps serving" not in message


def test_a_value_too_short_to_mask_is_refused_not_used(tmp_path: Path) -> None:
    put(tmp_path / "PIN", "t")
    put(tmp_path / "GOOD", "long-enough-value")
    with pytest.raises(SecretMissing, match=f"PIN shorter than {MIN_LENGTH} characters") as caught:
        SecretStore(tmp_path).resolve(["PIN", "GOOD"], service="svc")
    assert "long-enough-value" not in str(caught.value)


@pytest.mark.parametrize("short", ["t", "'", "test", "command"])
def test_short_values_never_garble_ordinary_text(tmp_path: Path, short: str) -> None:
    put(tmp_path / "TINY", short)
    text = "ApplyFailed: supervisord startProcess: NO_FILE: can't find command 'uvicorn' (latest test)"
    assert SecretStore(tmp_path, also_mask=[short]).mask(text) == text


def test_whole_values_are_masked_wherever_they_appear(tmp_path: Path) -> None:
    put(tmp_path / "HF_TOKEN", "hf_abcdefgh")
    store = SecretStore(tmp_path)
    assert store.mask("url http://x:hf_abcdefgh@h and hf_abcdefghij") == f"url http://x:{MASK}@h and {MASK}ij"


def test_a_supervisor_fault_keeps_its_words() -> None:
    rpc = SupervisorRpc(Path("/nonexistent.sock"), include_dir=Path("/nonexistent"), timeout=1)
    fault = xmlrpc.client.Fault(Faults.NO_FILE, "NO_FILE: can't find command 'uvicorn'")
    assert str(rpc._fault_error("startProcess", fault)) == \
        "supervisord startProcess: NO_FILE: can't find command 'uvicorn'"


def test_redact_hides_quoted_values_but_not_apostrophes() -> None:
    assert redact("can't find command 'uvicorn'") == "can't find command '<hidden>'"
    assert redact("File contains parsing errors: 'KEY=\"s3cr3t\"'") == "File contains parsing errors: '<hidden>'"
    assert redact("it doesn't parse") == "it doesn't parse"


def test_a_secret_too_large_is_refused_not_cut(tmp_path: Path) -> None:
    put(tmp_path / "BIG", "x" * (64 * 1024 + 10))
    with pytest.raises(SecretMissing, match="secret BIG is larger than 64 KiB"):
        SecretStore(tmp_path).resolve(["BIG"], service="svc")
    with pytest.raises(SecretMissing):
        SecretStore(tmp_path).content("BIG", service="svc")
