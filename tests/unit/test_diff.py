"""Spec diffs: field paths, added/removed/changed, secret-looking values masked."""

from deployer.model.diff import MASK, spec_diff


def test_changed_added_and_removed_fields_by_path() -> None:
    old = {"port": 8800, "env": {"MODEL": "a", "OLD": "x"}, "argv": ["python", "a.py"], "sha": "1" * 40}
    new = {"port": 8801, "env": {"MODEL": "b", "NEW": "y"}, "argv": ["python", "a.py", "--fast"], "sha": "2" * 40}
    changes = {change.path: (change.kind, change.old, change.new) for change in spec_diff(old, new)}
    assert changes == {
        "port": ("changed", "8800", "8801"),
        "env.MODEL": ("changed", "a", "b"),
        "env.OLD": ("removed", "x", None),
        "env.NEW": ("added", None, "y"),
        "argv[2]": ("added", None, "--fast"),
    }


def test_secret_looking_values_are_masked() -> None:
    changes = spec_diff({"env": {"HF_TOKEN": "hf_old", "API_KEY": "same"}},
                        {"env": {"HF_TOKEN": "hf_new", "API_KEY": "same", "DB_PASSWORD": "pw"}})
    assert {(change.path, change.kind) for change in changes} == {("env.HF_TOKEN", "changed"),
                                                                  ("env.DB_PASSWORD", "added")}
    assert all("hf_" not in str(change) and change.new != "pw" for change in changes)
    assert all(change.new == MASK for change in changes)


def test_no_previous_revision_means_everything_is_added() -> None:
    changes = spec_diff(None, {"name": "svc", "replicas": 1})
    assert [(change.path, change.kind) for change in changes] == [("name", "added"), ("replicas", "added")]
