"""service.yaml loading: exact "file:line:col: path: message" lines for every kind of bad input."""

from __future__ import annotations

import io
import json
import textwrap
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from deployer.errors import ManifestError
from deployer.loader import MAX_BYTES, json_schema, load_manifest, load_manifest_file, schema_text
from deployer.model.manifest import ManifestFile

REPO = Path(__file__).resolve().parents[2]
RANGE = (8800, 8999)
SERVICE_KEYS = (
    "name, path, runtime, command, requirements, port, env, secrets, health, info, group, demo, "
    "gateway, rollout, resources, replicas, placement, hooks, docker, files, artifacts"
)


def problems(text: str, filename: str = "service.yaml") -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(textwrap.dedent(text), filename=filename, port_range=RANGE)
    return caught.value.problems


def file_problems(path: Path, root: Path) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest_file(path, repo_root=root, port_range=RANGE)
    return caught.value.problems


# ---------------------------------------------------------------- valid files


SINGLE = """\
name: text-classify
command: python -m uvicorn main:app --port ${PORT}
port: 8800
env: {MODEL_NAME: bert-base, WORKERS: 2, DEBUG: false}
health: {path: /health, timeout: 30}
demo:
  - {name: short-review, input: demo/short.json}
"""

MULTI = """\
services:
  - name: text-classify
    path: services/text
    port: auto
  - name: image-recognise
    path: services/image
    runtime: docker
    resources: {memory: 2g, cpus: 1.5}
"""


def round_trip(manifest: ManifestFile) -> ManifestFile:
    """Dump to YAML and load again: what the loader reads is what the model holds."""
    stream = io.StringIO()
    YAML(typ="safe", pure=True).dump(manifest.model_dump(mode="json", exclude_defaults=True), stream)
    return load_manifest(stream.getvalue(), port_range=RANGE)


def test_single_service_file() -> None:
    manifest = load_manifest(SINGLE, port_range=RANGE)
    (service,) = manifest.services
    assert service.name == "text-classify" and service.port == 8800
    assert service.env == {"MODEL_NAME": "bert-base", "WORKERS": "2", "DEBUG": "false"}
    assert service.health.timeout == 30
    assert round_trip(manifest) == manifest


def test_multi_service_file() -> None:
    manifest = load_manifest(MULTI, port_range=RANGE)
    assert [s.name for s in manifest.services] == ["text-classify", "image-recognise"]
    assert manifest.services[1].runtime == "docker" and manifest.services[1].resources.cpus == 1.5
    assert round_trip(manifest) == manifest


def test_bytes_input_with_bom() -> None:
    assert load_manifest(b"\xef\xbb\xbfname: a\n").services[0].name == "a"


def test_example_manifests_load() -> None:
    examples = sorted((REPO / "manifests" / "examples").glob("*/service.yaml"))
    # An empty glob (examples moved or renamed) must fail, not pass with nothing checked.
    assert "text-classify" in [path.parent.name for path in examples], examples
    for path in examples:
        manifest = load_manifest_file(path, repo_root=path.parent)
        assert manifest.services, path


# ---------------------------------------------------------------- model errors


def test_unknown_key() -> None:
    assert problems("name: a\nprot: 8800\n") == [
        f"service.yaml:2:1: unknown key 'prot'; did you mean 'port'? (allowed: {SERVICE_KEYS})"
    ]


def test_unknown_nested_key_in_multi_service_file() -> None:
    assert problems("services:\n  - name: a\n    health: {path: /h, retries: 3}\n") == [
        "service.yaml:3:24: services[0].health: unknown key 'retries' (allowed: path, timeout, interval)"
    ]


def test_missing_name() -> None:
    assert problems("port: 8800\n") == ["service.yaml:1:1: required key 'name' is missing"]
    assert problems("services:\n  - port: 8800\n") == [
        "service.yaml:2:5: services[0]: required key 'name' is missing"
    ]


def test_missing_nested_key_points_at_parent_key() -> None:
    assert problems("name: a\ngateway: {}\n") == ["service.yaml:2:1: gateway: required key 'path' is missing"]


def test_bad_name() -> None:
    assert problems("services:\n  - name: Text_Classify\n") == [
        "service.yaml:2:11: services[0].name: must match ^[a-z][a-z0-9-]{0,39}$: a lowercase letter, "
        "then up to 39 lowercase letters, digits or '-' (got 'Text_Classify')"
    ]


def test_port_out_of_range() -> None:
    assert problems("services:\n  - name: a\n    port: 80\n") == [
        "service.yaml:3:11: services[0].port: must be between 8800 and 8999 (got 80)"
    ]


@pytest.mark.parametrize(("value", "got"), [("eighty", "'eighty'"), ('"8800"', "'8800'"), ("true", "True"),
                                             ("8800.5", "8800.5")])
def test_port_type(value: str, got: str) -> None:
    assert problems(f"name: a\nport: {value}\n") == [
        f"service.yaml:2:7: port: must be 'auto' or an integer (got {got})"
    ]


def test_runtime_lists_allowed_values() -> None:
    assert problems("name: a\nruntime: k8s\n") == [
        "service.yaml:2:10: runtime: must be one of 'supervisor', 'docker', 'swarm' (got 'k8s')"
    ]


def test_dotdot_path() -> None:
    assert problems("name: a\npath: services/../../etc\n") == [
        "service.yaml:2:7: path: must stay inside the repository, '..' is not allowed "
        "(got 'services/../../etc')"
    ]


def test_absolute_path() -> None:
    assert problems("name: a\nrequirements: /etc/passwd\n") == [
        "service.yaml:2:15: requirements: must be relative to the repository root (got '/etc/passwd')"
    ]


def test_duplicate_service_names() -> None:
    assert problems("services:\n  - name: a\n  - name: b\n  - name: a\n") == [
        "service.yaml:4:11: services[2].name: service name 'a' is used twice (first on line 2)"
    ]


def test_env_value_with_newline() -> None:
    # Quoted "\n" is a real newline: it would inject lines into a supervisor program file.
    assert problems('name: a\nenv:\n  GOOD: "x"\n  BAD: "x\\n[program:evil]"\n') == [
        "service.yaml:4:8: env.BAD: must not contain control characters (newline, carriage return, NUL ...)"
    ]


def test_bad_env_key_points_at_the_key() -> None:
    assert problems("name: a\nenv:\n  bad-key: x\n") == [
        "service.yaml:3:3: env.bad-key: key must match ^[A-Za-z_][A-Za-z0-9_]{0,127}$: "
        "a letter or '_', then letters, digits or '_'"
    ]


def test_all_problems_are_reported_in_file_order() -> None:
    assert problems("name: A\nport: 1\nruntime: x\nfoo: 1\n") == [
        "service.yaml:1:7: name: must match ^[a-z][a-z0-9-]{0,39}$: a lowercase letter, then up to 39 "
        "lowercase letters, digits or '-' (got 'A')",
        "service.yaml:2:7: port: must be between 8800 and 8999 (got 1)",
        "service.yaml:3:10: runtime: must be one of 'supervisor', 'docker', 'swarm' (got 'x')",
        f"service.yaml:4:1: unknown key 'foo' (allowed: {SERVICE_KEYS})",
    ]


def test_filename_is_used_in_messages() -> None:
    assert problems("port: 8800\n", filename="repo/service.yaml") == [
        "repo/service.yaml:1:1: required key 'name' is missing"
    ]


# ---------------------------------------------------------------- YAML-level refusals


def test_duplicate_key() -> None:
    assert problems("name: a\nport: 8800\nport: 8801\n") == [
        "service.yaml:3:1: duplicate key 'port' (first defined on line 2)"
    ]


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_alias_bomb_is_refused_at_once() -> None:
    started = time.monotonic()
    assert problems(BILLION_LAUGHS) == ["service.yaml:1:4: anchors and aliases are not allowed"]
    assert time.monotonic() - started < 1


def test_harmless_alias_is_refused_too() -> None:
    assert problems("name: &n a\ngroup: *n\n") == ["service.yaml:1:7: anchors and aliases are not allowed"]


def test_file_over_256_kib() -> None:
    text = "name: a\n" + "# padding\n" * (MAX_BYTES // 10)
    assert problems(text) == [
        f"service.yaml:1:1: file is larger than 256 KiB ({len(text)} bytes or more); "
        "keep data and models out of it"
    ]


def test_file_over_256_kib_is_not_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "service.yaml"
    path.write_bytes(b"name: a\n" + b"#" * (10 * MAX_BYTES))
    assert file_problems(path, tmp_path) == [
        f"service.yaml:1:1: file is larger than 256 KiB ({MAX_BYTES + 1} bytes or more); "
        "keep data and models out of it"
    ]


def test_multiple_documents() -> None:
    assert problems("name: a\n---\nname: b\n") == [
        "service.yaml:2:1: only one YAML document is allowed (found a second '---')"
    ]


def test_top_level_must_be_a_mapping() -> None:
    assert problems("- name: a\n") == [
        "service.yaml:1:1: the top level must be a mapping (a service, or 'services:'), got a list"
    ]


def test_empty_file() -> None:
    assert problems("# nothing yet\n") == [
        "service.yaml:1:1: the file is empty; expected a service (name: …) or 'services:'"
    ]


def test_services_with_another_top_level_key() -> None:
    assert problems("services:\n  - name: a\nport: 8800\n") == [
        "service.yaml:3:1: port: not allowed next to 'services' (with 'services:', it must be the only "
        "top-level key; put service keys inside its list entries)"
    ]


def test_tags_are_refused() -> None:
    assert problems("name: !!str a\ngroup: !custom b\n") == [
        "service.yaml:1:7: tags are not allowed (found !!str)",
        "service.yaml:2:8: tags are not allowed (found !custom)",
    ]


def test_timestamps_are_refused() -> None:
    assert problems("name: a\nenv:\n  RELEASED: 2024-01-01\n") == [
        "service.yaml:3:13: env.RELEASED: a timestamp is not allowed here; quote it to make it text"
    ]


def test_merge_keys_are_refused() -> None:
    assert problems("name: a\n<<: {port: 8800}\n") == ["service.yaml:2:1: merge keys ('<<') are not allowed"]


def test_syntax_error() -> None:
    assert problems("name: [a\n") == [
        "service.yaml:2:1: YAML syntax error: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence)"
    ]


def test_invalid_utf8() -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifest(b"name: a\ngroup: \xff\n")
    assert caught.value.problems == ["service.yaml:2:8: not valid UTF-8 (byte 0xff)"]


# ---------------------------------------------------------------- files on disk


def make_repo(root: Path, manifest: str, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    path = root / "service.yaml"
    path.write_text(textwrap.dedent(manifest))
    return path


def test_files_inside_the_repo_are_accepted(tmp_path: Path) -> None:
    path = make_repo(tmp_path / "repo", """\
        services:
          - name: a
            path: svc
            requirements: requirements.txt
            demo: [{name: d, input: demo/in.json}]
            hooks: {pre_deploy: scripts/fetch.sh}
        """, {"svc/requirements.txt": "", "svc/demo/in.json": "{}", "svc/scripts/fetch.sh": ""})
    assert load_manifest_file(path).services[0].path == "svc"


def test_missing_service_folder(tmp_path: Path) -> None:
    path = make_repo(tmp_path / "repo", "name: a\npath: services/a\n")
    assert file_problems(path, tmp_path / "repo") == [
        "service.yaml:2:7: path: folder 'services/a' does not exist in the repository"
    ]


def test_missing_referenced_files(tmp_path: Path) -> None:
    path = make_repo(tmp_path / "repo", "name: a\nrequirements: req.txt\ndemo:\n  - {name: d, file: x.png}\n")
    assert file_problems(path, tmp_path / "repo") == [
        "service.yaml:2:15: requirements: file 'req.txt' does not exist in the service folder",
        "service.yaml:4:21: demo[0].file: file 'x.png' does not exist in the service folder",
    ]


def test_symlink_out_of_the_repo(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "requirements.txt").write_text("evil\n")
    root = tmp_path / "repo"
    path = make_repo(root, """\
        services:
          - name: a
            path: svc
            requirements: requirements.txt
          - name: b
            path: escape
        """, {"svc/.keep": ""})
    (root / "svc" / "requirements.txt").symlink_to(outside / "requirements.txt")
    (root / "escape").symlink_to(outside)
    assert file_problems(path, root) == [
        "service.yaml:4:19: services[0].requirements: 'requirements.txt' leads outside the repository "
        "(a symlink pointing out is not allowed)",
        "service.yaml:6:11: services[1].path: 'escape' leads outside the repository "
        "(a symlink pointing out is not allowed)",
    ]


def test_symlink_inside_the_repo_is_fine(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    path = make_repo(root, "name: a\nrequirements: req.txt\n", {"shared/req.txt": ""})
    (root / "req.txt").symlink_to(root / "shared" / "req.txt")
    assert load_manifest_file(path).services[0].requirements == "req.txt"


# ---------------------------------------------------------------- schema


def test_committed_schema_is_current() -> None:
    committed = REPO / "manifests" / "service.schema.json"
    assert committed.read_text(encoding="utf-8") == schema_text(), (
        "manifests/service.schema.json is stale: run "
        "python -c 'from pathlib import Path; from deployer.loader import write_schema; "
        "write_schema(Path(\"manifests/service.schema.json\"))'"
    )
    assert json.loads(committed.read_text(encoding="utf-8")) == json_schema()


def test_schema_accepts_both_shapes() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] and schema["description"]
    assert schema["anyOf"] == [{"$ref": "#/$defs/ServiceManifest"}, {"$ref": "#/$defs/ManifestFile"}]
    service = schema["$defs"]["ServiceManifest"]
    assert service["additionalProperties"] is False and service["required"] == ["name"]
    assert all("description" in prop for prop in service["properties"].values())


def test_placement_is_swarms_and_speaks_its_syntax() -> None:
    text = ("name: a\nruntime: swarm\nreplicas: 2\n"
            "placement: {spread: node.labels.zone, constraints: [node.role==worker, 'node.labels.gpu != none']}\n")
    placement = load_manifest(text).services[0].placement
    assert placement is not None and placement.spread == "node.labels.zone"
    assert placement.constraints == ["node.role==worker", "node.labels.gpu != none"]
    assert load_manifest("name: a\nplacement: {}\n").services[0].placement.spread == "node.id"  # type: ignore[union-attr]
    assert problems("name: a\nruntime: docker\nplacement: {spread: node.id}\n") == [
        "service.yaml:3:12: placement: placement applies to runtime swarm only (this service's runtime is docker)"]
    assert "placement.constraints[0]: must match" in problems("name: a\nplacement: {constraints: ['x==1; rm']}\n")[0]
    assert "placement.spread: must match" in problems("name: a\nplacement: {spread: 'node.id }'}\n")[0]
