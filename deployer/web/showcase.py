"""The showcase: what each service's demo inputs got back, made ready to show people.

Reads recorded demo answers, revisions and groups from the store and demo input
files kept under the state dir (never git); decides how an answer is shown (pretty JSON, score
bars, pictures whose bytes were checked) and the type a stored file is served
as: sniffed from its bytes, never the service's claim, so nothing a model returns
can run as HTML or script on the daemon's origin.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import mimetypes
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from deployer.demo import DemoLimits
from deployer.model.diff import spec_diff, with_previous
from deployer.model.status import DemoView, RevisionView, ServiceView
from deployer.reconcile.demos import input_copy
from deployer.safety import UnsafePath, contained, file_inside, is_full_sha, is_source_name
from deployer.store import Store

IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
SHOWN_CHARS = 20_000  # an answer's text on a page; the JSON API has all of it
PREVIEW_BYTES = 16 * 1024  # JSON inputs up to this size are shown inline
REVISIONS = 5  # columns of the revision comparison
OCTET = "application/octet-stream"
_LONG_STRING = 600
_MAX_PICTURES = 6
_MAX_LINKS = 6
_MAX_SCORES = 20
_MAX_WALK = 5_000  # strings and containers visited per answer
_IMAGE_KEYS = frozenset({"image", "image_base64"})
_DATA_URI = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,(.*)", re.S)
_IMAGE_URL = re.compile(r"https?://[^\s\"'<>\\]+\.(?:png|jpe?g|gif|webp)(?:[?#][^\s\"'<>\\]*)?", re.I)
_WEB_URL = re.compile(r"https?://[^\s\"'<>\\]+")


def sniff(head: bytes) -> str | None:
    """The media type the first bytes prove (png, jpeg, gif, webp, wav, mp3, ogg, mp4), else None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"WAVE"):
        return "image/webp" if head[8:12] == b"WEBP" else "audio/wav"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE6 == 0xE2):
        return "audio/mpeg"  # an ID3 tag, or an MPEG audio frame sync with layer III
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head[4:8] == b"ftyp":
        return "audio/mp4" if head[8:12] == b"M4A " else "video/mp4"
    return None


def input_type(name: str, data: bytes) -> str:
    """What a demo input file is served as: sniffed media, JSON, plain text, or opaque bytes."""
    sniffed = sniff(data[:64])
    if sniffed:
        return sniffed
    guessed = mimetypes.guess_type(name)[0] or ""
    if guessed == "application/json":
        return "application/json"
    if guessed.startswith("text/"):  # html and javascript included: never rendered, only shown
        return "text/plain; charset=utf-8"
    return OCTET


# -- answers --------------------------------------------------------------


class Shape(StrEnum):
    """What a recorded answer holds."""

    JSON = "json"
    TEXT = "text"
    FILE = "file"  # binary, stored under <state_dir>/demo/
    NOTHING = "nothing"  # no answer (timeout, refused connection, missing input)


@dataclass(frozen=True)
class Score:
    label: str
    value: float
    width: int  # of the bar, percent
    top: bool


@dataclass(frozen=True)
class Picture:
    """An image found in a JSON answer, rebuilt as a data URI from bytes whose magic matched."""

    src: str
    media_type: str
    size: int
    where: str


@dataclass(frozen=True)
class Answer:
    view: DemoView
    shape: Shape
    shown: str = ""
    note: str = ""
    label: str | None = None
    scores: tuple[Score, ...] = ()
    pictures: tuple[Picture, ...] = ()
    links: tuple[str, ...] = ()
    media_type: str | None = None  # a FILE's sniffed type

    @property
    def media(self) -> str | None:
        """'image', 'audio' or 'video' when a FILE answer is one of those, as its bytes prove."""
        return self.media_type.split("/")[0] if self.media_type else None


def interpret(view: DemoView, state_dir: Path) -> Answer:
    if view.text is not None:
        return _text_answer(view)
    if view.body_file:
        head = _read(demo_file(state_dir, view.body_file), 64)
        note = "" if head is not None else "the stored file is gone"
        return Answer(view, Shape.FILE, note=note, media_type=sniff(head or b""))
    return Answer(view, Shape.NOTHING)


def _text_answer(view: DemoView) -> Answer:
    text = view.text or ""
    try:
        data = json.loads(text)
    except ValueError:
        shown, clipped = _clip(text)
        note = "cut at [demo] max_response_bytes" if view.truncated else "not JSON" if text.strip() else "empty answer"
        return Answer(view, Shape.TEXT, shown, note + (", clipped for display" if clipped else ""))
    found = _Found()
    found.walk(data, "", "")
    shown, clipped = _clip(json.dumps(found.abridge(data), indent=2, ensure_ascii=False))
    label, scores = _scores(data)
    return Answer(view, Shape.JSON, shown, "clipped for display" if clipped else "", label, scores,
                  tuple(found.pictures), tuple(found.links))


def _clip(text: str) -> tuple[str, bool]:
    if len(text) <= SHOWN_CHARS:
        return text, False
    return text[:SHOWN_CHARS] + f"\n… ({len(text) - SHOWN_CHARS} more characters)", True


@dataclass
class _Found:
    """Pictures and image links in a JSON answer (bounded: an answer is hostile until shown otherwise)."""

    pictures: list[Picture] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    replaced: dict[str, str] = field(default_factory=dict)  # picture string -> its placeholder
    visited: int = 0

    def walk(self, data: Any, key: str, where: str, depth: int = 0) -> None:
        self.visited += 1
        if self.visited > _MAX_WALK or depth > 12:
            return
        if isinstance(data, dict):
            for child_key, child in data.items():
                self.walk(child, str(child_key), f"{where}.{child_key}" if where else str(child_key), depth + 1)
        elif isinstance(data, list):
            for index, child in enumerate(data):
                self.walk(child, key, f"{where}[{index}]", depth + 1)
        elif isinstance(data, str):
            self._string(data, key, where or "(answer)")

    def _string(self, value: str, key: str, where: str) -> None:
        if len(self.pictures) < _MAX_PICTURES and value not in self.replaced:
            picture = _picture(value, key, where)
            if picture is not None:
                self.pictures.append(picture)
                self.replaced[value] = f"[{picture.media_type}, {picture.size} bytes: shown as a picture]"
                return
        url = value.strip()
        image_link = _IMAGE_URL.fullmatch(url) or (key.lower() in _IMAGE_KEYS and _WEB_URL.fullmatch(url))
        if image_link and url not in self.links and len(self.links) < _MAX_LINKS:
            self.links.append(url)

    def abridge(self, data: Any, depth: int = 0) -> Any:
        """The answer as shown: pictures and very long strings replaced by what they are."""
        if depth > 64:
            return "…"
        if isinstance(data, dict):
            return {key: self.abridge(value, depth + 1) for key, value in data.items()}
        if isinstance(data, list):
            return [self.abridge(value, depth + 1) for value in data]
        if isinstance(data, str) and len(data) > _LONG_STRING:
            return self.replaced.get(data) or f"{data[:_LONG_STRING]}… ({len(data) - _LONG_STRING} more characters)"
        return self.replaced.get(data, data) if isinstance(data, str) else data


def _picture(value: str, key: str, where: str) -> Picture | None:
    """A ``data:image/…;base64,`` string, or base64 under a key named image/image_base64, that decodes to an image."""
    match = _DATA_URI.fullmatch(value.strip())
    if match is None and key.lower() not in _IMAGE_KEYS:
        return None
    payload = "".join((match.group(1) if match else value).split())
    if len(payload) < 16:
        return None
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None
    kind = sniff(raw[:32])
    if kind not in IMAGES:
        return None
    return Picture(f"data:{kind};base64,{base64.b64encode(raw).decode('ascii')}", kind, len(raw), where)


def _scores(data: Any) -> tuple[str | None, tuple[Score, ...]]:
    """``{"label": …, "scores": {label: number}}`` or a list of ``{"label", "score"}`` as bars, highest first."""
    label: str | None = None
    pairs: list[tuple[str, float]] = []
    if isinstance(data, dict):
        label = data["label"] if isinstance(data.get("label"), str) else None
        raw = data.get("scores")
        pairs = _pairs(raw.items()) if isinstance(raw, dict) else _labelled(raw) if isinstance(raw, list) else []
    elif isinstance(data, list):
        pairs = _labelled(data)
    if not pairs:
        return label, ()
    pairs.sort(key=lambda pair: -pair[1])
    chosen = label if label is not None else pairs[0][0]
    scale = 1.0 if all(0 <= value <= 1 for _, value in pairs) else max(max(v for _, v in pairs), 1e-9)
    return chosen, tuple(Score(name, value, max(0, min(100, round(value / scale * 100))), name == chosen)
                         for name, value in pairs[:_MAX_SCORES])


def _pairs(items: Any) -> list[tuple[str, float]]:
    return [(str(key), float(value)) for key, value in items if _number(value)]


def _labelled(items: list[Any]) -> list[tuple[str, float]]:
    return _pairs((item["label"], item["score"]) for item in items
                  if isinstance(item, dict) and isinstance(item.get("label"), str) and "score" in item)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- inputs ---------------------------------------------------------------


@dataclass(frozen=True)
class DemoInput:
    """A demo input as the manifest names it; ``preview`` is a small JSON input, pretty-printed."""

    service: str
    revision: int
    name: str
    path: str
    sent_as: str  # "json" (input:) or "file" (file:, multipart)
    media: str  # "json", "image", "audio", "video", "text" or "file": what the page embeds
    preview: str | None = None

    @property
    def url(self) -> str:
        return f"/services/{self.service}/demo-input/{self.revision}/{self.name}"


def _media_of(path: str, sent_as: str) -> str:
    if sent_as == "json":
        return "json"
    guessed = mimetypes.guess_type(path)[0] or ""
    kind = guessed.split("/")[0]
    return kind if kind in ("image", "audio", "video", "text") else "file"


def _demo_specs(revision: RevisionView) -> dict[str, dict[str, Any]]:
    demos = revision.spec.get("demo")
    if not isinstance(demos, list):
        return {}
    return {str(item["name"]): item for item in demos if isinstance(item, dict) and "name" in item}


# -- tables ---------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One side of a comparison: a service (group page) or a revision (revision comparison)."""

    title: str
    answers: Mapping[str, Answer]
    service: ServiceView | None = None
    revision: RevisionView | None = None
    revision_id: int | None = None
    status: str = ""  # running, desired, or its newest attempt's outcome
    headline: str = ""  # what changed from the revision before


@dataclass(frozen=True)
class Table:
    """Demo inputs as rows, columns side by side; ``inputs`` has each row's input where one is known."""

    rows: list[str]
    columns: list[Column]
    inputs: Mapping[str, DemoInput]


def headline(older: RevisionView | None, newer: RevisionView) -> str:
    """'env.MODEL_VERSION 1.0 → 2.0, code changed' — the first changes from the revision before."""
    if older is None:
        return "first revision"
    changes = [change for change in spec_diff(older.spec, newer.spec) if change.path != "requirements_hash"]
    if not changes:
        return "same spec"
    parts = ["code changed" if change.path == "tree" else
             f"{change.path} {_cut(change.old)} → {_cut(change.new)}" for change in changes[:2]]
    return ", ".join(parts) + (f" +{len(changes) - 2} more" if len(changes) > 2 else "")


def _cut(value: str | None) -> str:
    if value is None:
        return "∅"
    return value if len(value) <= 24 else value[:23] + "…"


def _ordered_names(columns: Sequence[Mapping[str, Answer]], specs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Row order: as the manifests list their demos, then any answered demo no manifest lists any more."""
    names: dict[str, None] = {}
    for spec in specs:
        names.update(dict.fromkeys(spec))
    for answers in columns:
        names.update(dict.fromkeys(sorted(answers)))
    return list(names)


# -- the page layer's entry point -------------------------------------------


class Showcase:
    """What the showcase pages and file routes read; one per web app, safe to share between threads."""

    def __init__(self, store: Store, state_dir: Path, limits: DemoLimits) -> None:
        self.store = store
        self.state_dir = state_dir
        self.limits = limits
        self._previews: dict[tuple[int, str], str | None] = {}  # inputs at a revision never change
        self._guard = threading.Lock()

    # ---- one service

    def _runs(self, name: str, revisions: int) -> dict[int | None, dict[str, Answer]]:
        return {revision: {view.name: interpret(view, self.state_dir) for view in views}
                for revision, views in self.store.demos.runs(name, revisions=revisions).items()}

    def latest(self, view: ServiceView) -> tuple[int | None, list[tuple[DemoInput | None, Answer]]]:
        """The answers of the running revision (else of the newest with any), each beside its input."""
        runs = self.store.demos.runs(view.name, revisions=50)
        if not runs:
            return None, []
        chosen = view.running_revision if view.running_revision in runs else _newest(runs)
        answers = {result.name: interpret(result, self.state_dir) for result in runs[chosen]}
        revision = self.store.history.get_revision(chosen) if chosen is not None else None
        inputs = self._inputs(revision) if revision is not None else {}
        names = _ordered_names([answers], [_demo_specs(revision)] if revision is not None else [])
        return chosen, [(inputs.get(name), answers[name]) for name in names if name in answers]

    def revision_table(self, view: ServiceView, limit: int = REVISIONS) -> Table:
        """Rows: demo inputs; columns: the newest ``limit`` revisions that have answers, newest first."""
        runs = self._runs(view.name, limit)
        history = self.store.history.revisions(view.name, 200)
        by_id = {revision.id: revision for revision in history}
        older = {revision.id: before for revision, before in with_previous(history)}
        outcomes = self._outcomes(view.name)
        columns = [self._revision_column(view, key, runs[key], by_id.get(key) if key else None, older, outcomes)
                   for key in sorted(runs, key=lambda key: key or 0, reverse=True)]
        newest = next((column.revision for column in columns if column.revision is not None), None)
        specs = [_demo_specs(column.revision) for column in columns if column.revision is not None]
        inputs = self._inputs(newest) if newest is not None else {}
        return Table(_ordered_names([column.answers for column in columns], specs), columns, inputs)

    def _revision_column(self, view: ServiceView, key: int | None, answers: Mapping[str, Answer],
                         revision: RevisionView | None, older: Mapping[int, RevisionView | None],
                         outcomes: Mapping[int, str]) -> Column:
        if revision is None:
            return Column("ad hoc" if key is None else f"rev {key}", answers, revision_id=key)
        status = ("running" if revision.id == view.running_revision else
                  outcomes.get(revision.id, "desired" if revision.id == view.desired_revision else ""))
        return Column(f"rev {revision.id}", answers, revision=revision, revision_id=revision.id, status=status,
                      headline=headline(older.get(revision.id), revision))

    def _outcomes(self, name: str) -> dict[int, str]:
        """Each revision's newest attempt outcome."""
        outcomes: dict[int, str] = {}
        for attempt in self.store.history.attempts(name, 100):
            if attempt.revision is not None:
                outcomes.setdefault(attempt.revision, attempt.outcome)
        return outcomes

    # ---- a group

    def group_table(self, group: str) -> Table | None:
        """Rows: demo inputs (matched by name); columns: the group's services, each at its shown revision."""
        members = self.store.views.groups().get(group)
        if not members:
            return None
        views = [view for view in (self.store.views.service(name) for name in members) if view is not None]
        columns: list[Column] = []
        inputs: dict[str, DemoInput] = {}
        specs: list[dict[str, dict[str, Any]]] = []
        for view in views:
            shown, pairs = self.latest(view)
            columns.append(Column(view.name, {answer.view.name: answer for _, answer in pairs}, service=view,
                                  revision_id=shown))
            for item, _ in pairs:
                if item is not None:
                    inputs.setdefault(item.name, item)
            revision = self.store.history.get_revision(view.desired_revision) if view.desired_revision else None
            specs.append(_demo_specs(revision) if revision is not None else {})
        return Table(_ordered_names([column.answers for column in columns], specs), columns, inputs)

    # ---- files

    def demo_input(self, name: str, revision_id: int, demo_name: str, *,
                   limit: int | None = None) -> tuple[bytes, str] | None:
        """The bytes of a demo input file at a revision, and the type to serve them as.

        None when the revision is not this service's, the demo is not in it, the
        file is gone or leaves the service's folder, or it is larger than the cap.
        """
        revision = self.store.history.get_revision(revision_id)
        if revision is None or revision.service != name:
            return None
        spec = _demo_specs(revision).get(demo_name)
        relative = (spec.get("input") or spec.get("file")) if spec else None
        path = self._input_path(revision, demo_name, str(relative)) if relative else None
        data = _read(path, limit or self.limits.max_input_bytes, whole=True) if path else None
        return None if data is None else (data, input_type(Path(str(relative)).name, data))

    def _input_path(self, revision: RevisionView, demo_name: str, relative: str) -> Path | None:
        """The file as the demo sent it: the copy kept when the demo ran, else the checkout still on disk.

        Pages never run git: a revision whose demo never ran and whose checkout was pruned shows no input.
        """
        kept = input_copy(self.state_dir, revision.service, revision.id, demo_name)
        if kept.is_file():
            return kept
        source, sha = str(revision.spec.get("source") or ""), str(revision.spec.get("sha") or "")
        checkout = self.state_dir / "checkouts" / source / sha
        if not is_full_sha(sha) or not is_source_name(source) or not checkout.is_dir():
            return None
        try:
            workdir = contained(checkout, str(revision.spec.get("path") or "."))
        except UnsafePath:
            return None
        return file_inside(workdir, relative)

    def demo_output(self, name: str, result_id: int) -> tuple[bytes, str] | None:
        """A stored binary answer of this service, typed by its magic bytes (else opaque bytes)."""
        view = self._result(name, result_id)
        if view is None or not view.body_file:
            return None
        data = _read(demo_file(self.state_dir, view.body_file), self.limits.max_response_bytes)
        return None if data is None else (data, sniff(data[:64]) or OCTET)

    def _result(self, name: str, result_id: int) -> DemoView | None:
        """One of the service's recorded answers."""
        return self.store.demos.result(name, result_id)

    def _inputs(self, revision: RevisionView) -> dict[str, DemoInput]:
        inputs = {}
        for name, spec in _demo_specs(revision).items():
            if not spec.get("input") and not spec.get("file"):
                continue  # a GET or DELETE demo sends no body: nothing to show as its input
            sent_as = "json" if spec.get("input") else "file"
            path = str(spec.get("input") or spec.get("file") or "")
            media = _media_of(path, sent_as)
            preview = self._preview(revision, name) if media == "json" else None
            inputs[name] = DemoInput(revision.service, revision.id, name, path, sent_as, media, preview)
        return inputs

    def _preview(self, revision: RevisionView, demo_name: str) -> str | None:
        key = (revision.id, demo_name)
        with self._guard:
            if key in self._previews:
                return self._previews[key]
        found = self.demo_input(revision.service, revision.id, demo_name, limit=PREVIEW_BYTES)
        preview = _pretty_json(found[0]) if found is not None else None
        with self._guard:
            if len(self._previews) > 512:
                self._previews.clear()
            self._previews[key] = preview
        return preview


def demo_file(state_dir: Path, body_file: str) -> Path | None:
    """``<state_dir>/<body_file>`` when it is a file under ``<state_dir>/demo/``; None for anything else."""
    try:
        inside_demo = Path(body_file).relative_to("demo")  # as the reconciler writes it: demo/<service>/…
    except ValueError:
        return None
    return file_inside(state_dir / "demo", inside_demo)


def _read(path: Path | None, limit: int, *, whole: bool = False) -> bytes | None:
    """At most ``limit`` bytes; with ``whole``, None when the file is larger than that."""
    if path is None:
        return None
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1 if whole else limit)
    except OSError:
        return None
    return None if whole and len(data) > limit else data


def _pretty_json(data: bytes) -> str | None:
    try:
        return json.dumps(json.loads(data), indent=2, ensure_ascii=False)
    except ValueError:
        return None


def _newest(runs: Mapping[int | None, object]) -> int | None:
    return max(runs, key=lambda key: key or 0)

