"""``artifacts:`` in service.yaml: what validation refuses (each with its own message), the schema, the spec hash,
and the ``[artifacts]`` settings (keys only from files or the environment)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deployer.artifacts.place import Placed
from deployer.errors import ConfigError, ManifestError
from deployer.loader import json_schema, load_manifest, load_manifest_file
from deployer.model.desired import DesiredService
from deployer.settings import load_settings

DIGEST = "a" * 64
HEAD = "name: bert\ncommand: python serve.py\n"


def problems(artifacts: str, head: str = HEAD) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(head + textwrap.dedent(artifacts))
    return caught.value.problems


def test_a_well_formed_list_loads() -> None:
    manifest = load_manifest(HEAD + f"""artifacts:
  - {{url: s3://models/bert/v3.bin, sha256: {DIGEST}, path: models/bert.bin}}
  - {{url: "https://example.org/w.bin?version=3", sha256: {"b" * 64}, path: w.bin}}
""")
    assert [entry.path for entry in manifest.services[0].artifacts] == ["models/bert.bin", "w.bin"]


@pytest.mark.parametrize(("entry", "message"), [
    ("{url: s3://m/b.bin, path: b.bin}", "artifacts[0]: required key 'sha256' is missing"),
    ("{url: s3://m/b.bin, sha256: ABC, path: b.bin}", "artifacts[0].sha256: must match ^[0-9a-f]{64}$: the file's "
                                                      "sha256: 64 lowercase hex digits"),
    (f"{{url: s3://m/b.bin, sha256: {'A' * 64}, path: b.bin}}", "64 lowercase hex digits"),
    (f"{{url: ftp://h/b.bin, sha256: {DIGEST}, path: b.bin}}",
     "artifacts[0].url: scheme 'ftp' is not supported; use s3://BUCKET/KEY, http:// or https://"),
    (f"{{url: /srv/b.bin, sha256: {DIGEST}, path: b.bin}}", "scheme '(none)' is not supported"),
    (f"{{url: s3://bucket, sha256: {DIGEST}, path: b.bin}}", "artifacts[0].url: must name s3://BUCKET/KEY"),
    (f"{{url: 'https://user:pass@h/b.bin', sha256: {DIGEST}, path: b.bin}}",
     "artifacts[0].url: carries credentials (user:password@host); keys belong in deployer.toml [artifacts]"),
    (f"{{url: 'https://h/b.bin?X-Amz-Signature=abc&X-Amz-Credential=k', sha256: {DIGEST}, path: b.bin}}",
     "query parameter X-Amz-Credential, X-Amz-Signature looks like a credential"),
    (f"{{url: 'https://h/b.bin?token=abc', sha256: {DIGEST}, path: b.bin}}", "query parameter token looks like"),
    (f"{{url: s3://m/b.bin, sha256: {DIGEST}, path: ../b.bin}}",
     "artifacts[0].path: must stay inside the repository, '..' is not allowed"),
    (f"{{url: s3://m/b.bin, sha256: {DIGEST}, path: /etc/b.bin}}", "artifacts[0].path: must be relative"),
    (f"{{url: s3://m/b.bin, sha256: {DIGEST}, path: .}}", "artifacts[0].path: must name a file, not a folder"),
    (f"{{url: s3://m/b.bin, sha256: {DIGEST}, path: service.yaml}}",
     "artifacts: service.yaml is the manifest; an artifact must not replace it"),
    (f"{{url: s3://m/b.bin, sha256: {DIGEST}, path: Dockerfile}}", "Dockerfile is the Dockerfile"),
])
def test_refusals_say_what_is_wrong(entry: str, message: str) -> None:
    found = problems(f"artifacts:\n  - {entry}\n")
    assert len(found) == 1 and message in found[0], found


def test_duplicate_paths_and_a_files_target_are_refused() -> None:
    twice = problems(f"""artifacts:
  - {{url: s3://m/a.bin, sha256: {DIGEST}, path: models/w.bin}}
  - {{url: s3://m/b.bin, sha256: {"b" * 64}, path: ./models/w.bin}}
""")
    assert twice == ["service.yaml:4:3: artifacts: models/w.bin is given twice"]
    clash = problems(f"""files:
  - {{path: conf.toml, secret: CONF}}
artifacts:
  - {{url: s3://m/a.bin, sha256: {DIGEST}, path: conf.toml}}
""")
    assert clash == ["service.yaml:6:3: artifacts: conf.toml is the target of a 'files:' entry; an artifact must "
                     "not replace it"]


def test_a_path_through_a_symlink_out_of_the_service_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "svc").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "svc" / "models").symlink_to("../other")  # inside the repository, outside the service folder
    (tmp_path / "svc" / "data").mkdir()
    (tmp_path / "service.yaml").write_text(f"""name: bert
path: svc
command: python serve.py
artifacts:
  - {{url: s3://m/a.bin, sha256: {DIGEST}, path: models/w.bin}}
  - {{url: s3://m/b.bin, sha256: {"b" * 64}, path: data}}
  - {{url: s3://m/c.bin, sha256: {"c" * 64}, path: new/w.bin}}
""")
    with pytest.raises(ManifestError) as caught:
        load_manifest_file(tmp_path / "service.yaml")
    assert caught.value.problems == [
        "service.yaml:5:105: artifacts[0].path: 'models/w.bin' leads outside the service folder (a symlink pointing "
        "out is not allowed)",
        "service.yaml:6:105: artifacts[1].path: 'data' is a folder in the repository; name a file"]


def test_deployer_validate_refuses_and_the_schema_describes_artifacts(tmp_path: Path) -> None:
    (tmp_path / "service.yaml").write_text(HEAD + "artifacts:\n  - {url: 'https://u:p@h/b.bin', sha256: x, "
                                                  "path: b.bin}\n")
    done = subprocess.run([sys.executable, "-m", "deployer", "validate", str(tmp_path / "service.yaml")],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "artifacts[0].url: carries credentials" in done.stdout + done.stderr
    assert "u:p" not in (done.stdout + done.stderr).replace("'https://u:p@h/b.bin'", "")
    schema = json_schema()
    artifact = schema["$defs"]["ArtifactSpec"]
    assert artifact["required"] == ["url", "sha256", "path"]
    assert artifact["properties"]["sha256"]["pattern"] == "^[0-9a-f]{64}$"
    assert "artifacts" in schema["$defs"]["ServiceManifest"]["properties"]


def test_a_spec_without_artifacts_hashes_as_before_and_new_weights_change_it() -> None:
    base = dict(name="bert", source="s", sha="0" * 40, tree="t", runtime="supervisor", port=8800)
    plain = DesiredService(**base)  # type: ignore[arg-type]
    assert "artifacts" not in plain.spec()
    entry = {"url": "s3://m/a.bin", "sha256": DIGEST, "path": "w.bin"}
    one = DesiredService(**base, artifacts=(entry,))  # type: ignore[arg-type]
    other = DesiredService(**base, artifacts=({**entry, "sha256": "b" * 64},))  # type: ignore[arg-type]
    assert len({plain.spec_hash, one.spec_hash, other.spec_hash}) == 3


def test_the_step_says_what_was_fetched() -> None:
    assert Placed(2, 0, 5_000_000).summary() == "artifacts: 2 files, 0 B fetched (cached)"
    assert Placed(1, 200_000_000, 200_000_000).summary() == "artifacts: 1 file, 200.0 MB fetched of 200.0 MB"
    assert Placed(1, 80_000, 100_000, resumed=1).summary() == "artifacts: 1 file, 80.0 KB fetched of 100.0 KB, " \
                                                              "1 resumed"


def test_s3_keys_come_from_files_never_from_the_toml(tmp_path: Path) -> None:
    config = tmp_path / "deployer.toml"
    config.write_text('[artifacts]\ns3_secret_key = "in-clear"\n')
    with pytest.raises(ConfigError, match=r"\[artifacts\] s3_secret_key: secrets are not read from the toml") as caught:
        load_settings(config, {})
    assert "in-clear" not in str(caught.value)
    (tmp_path / "access").write_text("AKIA-TEST\n")
    (tmp_path / "secret").write_text("s3cr3t\n")
    config.write_text(f'[artifacts]\ns3_endpoint = "http://127.0.0.1:9000"\ncache_max = 1000\n'
                      f's3_access_key_file = "{tmp_path / "access"}"\ns3_secret_key_file = "{tmp_path / "secret"}"\n')
    settings = load_settings(config, {})
    assert settings.s3_keys == ("AKIA-TEST", "s3cr3t")
    assert (settings.artifacts.cache_max, settings.artifacts.parallel) == (1000, 4)
    assert "s3cr3t" not in repr(settings)
