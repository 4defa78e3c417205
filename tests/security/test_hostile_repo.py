"""Hostile repositories: a ``service.yaml`` that is a symlink, a FIFO or a huge file.

Nothing outside the checkout is ever read, nothing is read past its cap, and no
error quotes what a file holds: the secret planted outside the repository must
appear in no stored row, no pass result, no plan line and no log record.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from deployer.errors import ManifestError
from deployer.loader import MAX_BYTES, load_manifest_file
from deployer.model.status import Trigger
from tests.helpers import GitRepo
from tests.unit.test_reconcile import files, manifest, world  # noqa: F401  (fixture)

SECRET = "s3cr3t-planted-outside-the-repo-7f1c"


def _everything_stored(world: dict[str, Any]) -> str:  # noqa: F811
    store = world["store"]
    parts = [repr(store.views.services())]
    for view in store.views.services():
        parts.append(repr(store.history.attempts(view.name, 50)))
        parts.append(repr(store.history.revisions(view.name, 50)))
    parts.append(repr(world["reconciler"].sources.errors()))
    return "\n".join(parts)


def test_symlinked_manifest_pointing_outside_is_refused_and_never_read(
        world: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    outside = tmp_path / "other-service-secret"
    outside.write_text(f"name: {SECRET}\n")
    repo: GitRepo = world["repo"]
    repo.commit(files(manifest({"name": "alpha", "path": "alpha"})), "good")
    assert world["reconciler"].reconcile_source("repo", trigger=Trigger.WEBHOOK).outcomes == {"alpha": "succeeded"}

    (repo.work / "service.yaml").unlink()
    (repo.work / "service.yaml").symlink_to(outside)
    with caplog.at_level(logging.DEBUG):
        repo.commit({}, "manifest is a link to a file outside the repository")
        result = world["reconciler"].reconcile_source("repo", trigger=Trigger.WEBHOOK)
        preview = world["reconciler"].preview()

    assert result.error is not None
    stored = _everything_stored(world)
    assert "leads outside the repository" in stored
    seen = "\n".join([stored, repr(result), repr(preview), caplog.text])
    assert SECRET not in seen
    assert str(outside) not in seen  # not even where the link leads
    refused = world["store"].history.attempts("alpha", 1)[0].message
    assert refused.startswith("service.yaml:1:1: 'service.yaml' leads outside the repository"), refused
    assert world["store"].views.service("alpha").running_sha == repo.shas[0]  # the good revision keeps serving


def test_manifest_link_inside_the_repository_still_works(tmp_path: Path) -> None:
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "service.yaml").write_text("name: alpha\ncommand: python app.py\n")
    (tmp_path / "service.yaml").symlink_to("deploy/service.yaml")
    assert load_manifest_file(tmp_path / "service.yaml").services[0].name == "alpha"


def test_huge_manifest_is_refused_after_reading_at_most_the_cap(tmp_path: Path) -> None:
    (tmp_path / "service.yaml").write_bytes(b"# " + b"x" * (MAX_BYTES * 40))
    with pytest.raises(ManifestError, match="larger than 256 KiB"):
        load_manifest_file(tmp_path / "service.yaml")


@pytest.mark.timeout(10)
def test_fifo_manifest_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "service.yaml")
    with pytest.raises(ManifestError, match="not a regular file"):
        load_manifest_file(tmp_path / "service.yaml")


def test_manifest_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "service.yaml").mkdir()
    with pytest.raises(ManifestError, match=r"service\.yaml:1:1"):
        load_manifest_file(tmp_path / "service.yaml")
