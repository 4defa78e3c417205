"""The safety helpers every module uses: credentials out of URLs and text, commit ids, path containment."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.safety import (
    UnsafePath,
    contained,
    file_inside,
    is_contained,
    is_full_sha,
    is_sha_prefix,
    is_zero_sha,
    scrub,
    strip_credentials,
)

SHA1 = "3f786850e387550fdab836ed7e6dc881de23001b"
SHA256 = "a" * 64


@pytest.mark.parametrize(("url", "stripped"), [
    ("http://user:tok@host:3000/a/b.git", "http://host:3000/a/b.git"),
    ("https://tok@host/a.git", "https://host/a.git"),
    ("https://bot:s3cret@gitea.example:3000/x", "https://gitea.example:3000/x"),
    ("https://user:p@ss@host/a.git", "https://host/a.git"),  # an '@' inside the password
    ("http://u:p@[::1]:80/", "http://[::1]:80/"),
    ("//user:tok@host/a.git", "//host/a.git"),  # no scheme: still a URL with a host
    ("ssh://git:pw@host/a.git", "ssh://host/a.git"),
    ("https://host/a.git", "https://host/a.git"),
    ("http://[::1]:80/", "http://[::1]:80/"),
    ("/srv/git/a.git", "/srv/git/a.git"),
    ("git@host:a/b.git", "git@host:a/b.git"),  # scp-like: the user names an account, no secret
])
def test_strip_credentials(url: str, stripped: str) -> None:
    assert strip_credentials(url) == stripped


@pytest.mark.parametrize(("url", "stripped"), [
    ("ssh://git:pw@host/a.git", "ssh://git@host/a.git"),
    ("ssh://git@host/a.git", "ssh://git@host/a.git"),
    ("https://user:tok@host/a.git", "https://host/a.git"),  # http(s): a token can sit in the user part
    ("https://tok@host/a.git", "https://host/a.git"),
])
def test_strip_credentials_keeping_the_ssh_user(url: str, stripped: str) -> None:
    assert strip_credentials(url, keep_user=True) == stripped


def test_a_malformed_url_is_scrubbed_not_echoed() -> None:
    assert strip_credentials("http://user:tok@[::1/x") == "http://[::1/x"


def test_scrub_removes_credentials_from_free_text() -> None:
    text = "fatal: unable to access 'https://bot:tok3n@gitea.local/a.git/': 403; see http://x:y@h/b"
    assert scrub(text) == "fatal: unable to access 'https://gitea.local/a.git/': 403; see http://h/b"
    assert scrub("mail ada@example.com") == "mail ada@example.com"


@pytest.mark.parametrize(("text", "full", "zero", "prefix", "prefix7"), [
    (SHA1, True, False, True, True),
    (SHA256, True, False, True, True),
    ("0" * 40, True, True, True, True),
    ("0" * 64, True, True, True, True),
    ("0" * 41, False, False, True, True),
    ("abcd", False, False, True, False),
    ("abc", False, False, False, False),
    (SHA1.upper(), False, False, False, False),
    ("--output=x", False, False, False, False),  # never a git option
    (SHA1 + "\n", False, False, False, False),
    ("", False, False, False, False),
])
def test_commit_ids(text: str, full: bool, zero: bool, prefix: bool, prefix7: bool) -> None:
    assert is_full_sha(text) is full
    assert is_zero_sha(text) is zero
    assert is_sha_prefix(text) is prefix
    assert is_sha_prefix(text, shortest=7) is prefix7


def test_containment_follows_links_only_while_they_stay_inside(tmp_path: Path) -> None:
    root, outside = tmp_path / "repo", tmp_path / "secret.txt"
    (root / "sub").mkdir(parents=True)
    outside.write_text("secret")
    (root / "sub" / "file.txt").write_text("ok")
    (root / "inner").symlink_to("sub/file.txt")
    (root / "out").symlink_to(outside)

    assert contained(root, "inner") == (root / "sub" / "file.txt").resolve()
    assert is_contained(root, "sub") and is_contained(root, ".")
    for escape in ("out", "../secret.txt", str(outside), "sub/../../secret.txt"):
        assert not is_contained(root, escape), escape
        with pytest.raises(UnsafePath, match="leads outside the repository"):
            contained(root, escape)


def test_file_inside_answers_missing_folder_and_outside_alike(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "file.txt").write_text("ok")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "out").symlink_to(tmp_path / "secret.txt")

    assert file_inside(root, "sub/file.txt") == (root / "sub" / "file.txt").resolve()
    assert file_inside(root / "sub", "file.txt") == (root / "sub" / "file.txt").resolve()
    for refused in ("sub", "missing.txt", "out", "../secret.txt"):
        assert file_inside(root, refused) is None, refused
