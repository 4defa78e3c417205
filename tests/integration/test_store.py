"""The store against real SQLite and PostgreSQL databases (fixtures in tests/store_fixtures.py).

Every test runs on both backends: the same code must behave the same on each.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from deployer.errors import PortConflict, Reason
from deployer.model.desired import DesiredService
from deployer.model.status import DeliveryResult, Outcome, Trigger
from deployer.store import Delivery, SourceRecord, Store, StoreError
from deployer.store.tables import Base

SHA_A = "a" * 40
SHA_B = "b" * 40
BOUNDS = (8800, 8999)


def desired(
    name: str = "text-classify", *, sha: str = SHA_A, model: str = "bert", port: int = 8800
) -> DesiredService:
    return DesiredService(
        name=name,
        source="acme/models",
        sha=sha,
        tree="f" * 40,
        runtime="supervisor",
        command="python -m uvicorn main:app --port ${PORT}",
        port=port,
        env={"MODEL_NAME": model},
    )


HEAD = sorted(path.name.split("_")[0] for path in (Path(__file__).resolve().parents[2] / "deployer" / "store" /
                                                     "migrations" / "versions").glob("0*.py"))[-1]


def always_free(_port: int) -> bool:
    return True


def assert_utc(moment: datetime | None) -> None:
    assert moment is not None
    assert moment.tzinfo is not None
    assert moment.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - moment) < timedelta(minutes=1)


@pytest.fixture
def raw(store_url: str, store: Store) -> Iterator[sa.Engine]:
    """A plain engine on the store's database, to look at what was really written."""
    url = sa.make_url(store_url)
    if url.drivername == "postgresql":  # SQLAlchemy 2.1 would pick psycopg 3, which is not installed
        url = url.set(drivername="postgresql+psycopg2")
    engine = sa.create_engine(url)
    yield engine
    engine.dispose()


def add_attempt(
    store: Store, revision_id: int | None, outcome: Outcome, service: str = "text-classify"
) -> int:
    attempt = store.history.start_attempt(service, revision_id, Trigger.WEBHOOK)
    store.history.finish_attempt(attempt, outcome, "Reason", "message")
    return attempt


# -- lifecycle and schema --------------------------------------------------


def test_migrate_twice_keeps_data_and_one_version(store: Store, raw: sa.Engine) -> None:
    store.sources.upsert("acme/models", "https://gitea.local/acme/models.git", "main", "gitea")
    store.migrate()
    store.migrate()
    with raw.connect() as connection:
        versions = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    assert versions == [HEAD]
    assert [source.name for source in store.sources.all()] == ["acme/models"]


def test_migrations_build_exactly_the_tables_the_models_describe(store: Store, raw: sa.Engine) -> None:
    with raw.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []
    expected = {
        "sources", "services", "revisions", "attempts", "steps", "deliveries",
        "port_allocations", "observations", "overrides", "released_ports", "service_snapshots", "demo_results",
        "slot_ports",
        "alembic_version",
    }  # fmt: skip
    assert set(sa.inspect(raw).get_table_names()) == expected


def test_required_indices_exist(store: Store, raw: sa.Engine) -> None:
    inspector = sa.inspect(raw)

    def indexed(table: str) -> list[list[str | None]]:
        return [index["column_names"] for index in inspector.get_indexes(table)]

    assert ["service", "id"] in indexed("attempts")
    assert ["service", "id"] in indexed("revisions")
    assert ["repository", "ref", "after"] in indexed("deliveries")


def test_ping_succeeds_on_a_live_database(store: Store) -> None:
    store.ping()


def test_ping_unreachable_raises_store_error_without_password() -> None:
    unreachable = Store("postgresql://deployer:hunter2@127.0.0.1:1/deployer?connect_timeout=2")
    with pytest.raises(StoreError) as caught:
        unreachable.ping()
    assert caught.value.reason is Reason.INTERNAL_ERROR
    assert "hunter2" not in str(caught.value)
    assert str(caught.value).startswith("store: ping failed:")
    unreachable.close()


def test_bad_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="database url is not usable"):
        Store("not a url")


def test_foreign_keys_are_enforced_and_errors_are_translated(store: Store) -> None:
    with pytest.raises(StoreError, match="add_step failed"):
        store.history.add_step(999_999, "build", 0.1, True)


def test_sqlite_store_creates_its_directory_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nested" / "deployer.db"
    store = Store(f"sqlite:///{path}")
    store.migrate()
    store.close()
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        connection.close()


def source(store: Store, name: str) -> SourceRecord | None:
    return next((record for record in store.sources.all() if record.name == name), None)


# -- sources ---------------------------------------------------------------


def test_sources_upsert_get_list_and_head(store: Store) -> None:
    store.sources.upsert("b-repo", "file:///srv/b", "main", "config")
    store.sources.upsert("a-repo", "https://gitea.local/acme/a.git", "main", "gitea")
    store.sources.set_head("a-repo", SHA_A)
    store.sources.upsert("a-repo", "https://gitea.local/acme/a2.git", "release", "gitea")

    record = source(store, "a-repo")
    assert record is not None
    assert (record.url, record.branch, record.origin, record.last_sha) == (
        "https://gitea.local/acme/a2.git",
        "release",
        "gitea",
        SHA_A,
    )
    assert_utc(record.last_checked_at)
    assert [source.name for source in store.sources.all()] == ["a-repo", "b-repo"]
    assert source(store, "b-repo") is not None
    assert source(store, "b-repo").last_checked_at is None  # type: ignore[union-attr]
    assert source(store, "missing") is None


def test_source_credentials_never_reach_the_database(store: Store, raw: sa.Engine) -> None:
    store.sources.upsert("x", "https://deploy:s3cret-token@gitea.local/acme/x.git", "main", "gitea")
    store.sources.upsert("y", "ssh://git:pw@gitea.local/acme/y.git", "main", "config")
    assert source(store, "x").url == "https://gitea.local/acme/x.git"  # type: ignore[union-attr]
    assert source(store, "y").url == "ssh://git@gitea.local/acme/y.git"  # type: ignore[union-attr]
    with raw.connect() as connection:
        stored = " ".join(connection.execute(sa.text("SELECT url FROM sources")).scalars())
    assert "s3cret" not in stored
    assert "pw@" not in stored


def test_source_origin_is_checked(store: Store) -> None:
    with pytest.raises(ValueError, match="origin"):
        store.sources.upsert("x", "file:///x", "main", "github")


def test_head_of_unknown_source_is_an_error(store: Store) -> None:
    with pytest.raises(StoreError, match="'nope' is not known"):
        store.sources.set_head("nope", SHA_A)


# -- deliveries -------------------------------------------------------------


def test_recent_accepted_counts_only_accepted_deliveries(store: Store) -> None:
    key = ("acme/models", "refs/heads/main", SHA_A)
    store.deliveries.record([Delivery("d-1", "push", *key, DeliveryResult.REJECTED, "bad signature"),
                             Delivery("d-2", "push", *key, DeliveryResult.IGNORED, "tag push")])
    assert store.deliveries.recent_accepted() == []
    store.deliveries.record([Delivery("d-3", "push", *key, DeliveryResult.ACCEPTED, "queued"),
                             Delivery("d-4", "push", "acme/other", "refs/heads/main", SHA_B,
                                      DeliveryResult.ACCEPTED, "queued")])
    assert store.deliveries.recent_accepted() == [("acme/other", "refs/heads/main", SHA_B), key]
    assert store.deliveries.recent_accepted(limit=1) == [("acme/other", "refs/heads/main", SHA_B)]


def test_recent_deliveries_newest_first_with_limit(store: Store) -> None:
    for n in range(3):
        store.deliveries.record([Delivery(f"d-{n}", "push", "acme/m", "refs/heads/main", SHA_A,
                                          DeliveryResult.ACCEPTED, "")])
    recent = store.deliveries.recent(limit=2)
    assert [view.delivery_id for view in recent] == ["d-2", "d-1"]
    assert recent[0].result is DeliveryResult.ACCEPTED
    assert recent[0].id > recent[1].id
    assert_utc(recent[0].received_at)


def test_delivery_rows_hold_only_the_audit_fields(store: Store, raw: sa.Engine) -> None:
    store.deliveries.record([Delivery("d-9", "push", "acme/m", "refs/heads/main", SHA_A, DeliveryResult.DUPLICATE,
                                      "seen")])
    columns = {column["name"] for column in sa.inspect(raw).get_columns("deliveries")}
    assert columns == {
        "id",
        "delivery_id",
        "event",
        "repository",
        "ref",
        "after",
        "result",
        "detail",
        "received_at",
    }
    assert not {
        name for name in columns if any(word in name for word in ("header", "signature", "secret", "body"))
    }
    with raw.connect() as connection:
        row = connection.execute(sa.text("SELECT * FROM deliveries")).mappings().one()
    assert {
        key: row[key] for key in ("delivery_id", "event", "repository", "ref", "after", "result", "detail")
    } == {
        "delivery_id": "d-9",
        "event": "push",
        "repository": "acme/m",
        "ref": "refs/heads/main",
        "after": SHA_A,
        "result": "duplicate",
        "detail": "seen",
    }


# -- services ----------------------------------------------------------------


def test_inventory_upsert_remove_and_return(store: Store) -> None:
    store.services.upsert("a", "repo-1", "supervisor")
    store.services.upsert("b", "repo-1", "docker")
    store.services.upsert("c", "repo-2", "supervisor")
    assert store.services.inventory() == {"a", "b", "c"}
    assert store.services.inventory("repo-1") == {"a", "b"}
    assert store.services.source_of("c") == "repo-2"
    assert store.services.source_of("unknown") is None

    store.services.mark_removed("b")
    assert store.services.inventory("repo-1") == {"a"}
    assert store.services.source_of("b") is None
    store.services.mark_removed("never-existed")

    store.services.upsert("b", "repo-2", "swarm")
    assert store.services.inventory("repo-2") == {"b", "c"}
    view = store.views.service("b")
    assert view is not None
    assert (view.source, view.runtime) == ("repo-2", "swarm")


# -- revisions ---------------------------------------------------------------


def test_add_revision_reuses_same_hash_and_adds_on_change(store: Store) -> None:
    first = store.history.add_revision(desired(sha=SHA_A), author="ana", message="first", manifest_text="name: x\n")
    again = store.history.add_revision(
        desired(sha=SHA_B), author="bob", message="other service touched", manifest_text=""
    )
    assert again == first  # a new commit with the same spec is not a new revision
    assert first.sha == SHA_A

    changed = store.history.add_revision(
        desired(sha=SHA_B, model="roberta"), author="bob", message="m", manifest_text=""
    )
    assert changed.id > first.id
    back = store.history.add_revision(desired(sha=SHA_A), author="ana", message="revert", manifest_text="")
    assert back.id > changed.id  # A -> B -> A is three revisions: history keeps the order
    assert back.spec_hash == first.spec_hash
    assert [revision.id for revision in store.history.revisions("text-classify")] == [back.id, changed.id, first.id]
    assert [revision.id for revision in store.history.revisions("text-classify", limit=1)] == [back.id]


def test_revision_round_trips_spec_and_text(store: Store) -> None:
    want = desired()
    added = store.history.add_revision(want, author="ana <ana@acme>", message="add model", manifest_text="name: x\n")
    loaded = store.history.get_revision(added.id)
    assert loaded == added
    assert loaded.spec == want.spec()
    assert loaded.spec_hash == want.spec_hash
    assert (loaded.service, loaded.author, loaded.manifest_text) == (
        "text-classify",
        "ana <ana@acme>",
        "name: x\n",
    )
    assert_utc(loaded.created_at)
    assert store.history.get_revision(123_456) is None
    assert store.history.revisions("other") == []


def test_set_desired_and_running_are_shown(store: Store) -> None:
    store.services.upsert("text-classify", "acme/models", "supervisor")
    first = store.history.add_revision(desired(sha=SHA_A), author="a", message="m", manifest_text="")
    second = store.history.add_revision(desired(sha=SHA_B, model="other"), author="a", message="m", manifest_text="")
    store.services.set_desired("text-classify", second.id)
    store.services.set_running("text-classify", first.id)
    view = store.views.service("text-classify")
    assert view is not None
    assert (view.desired_sha, view.running_sha) == (SHA_B, SHA_A)
    assert (view.desired_revision, view.running_revision) == (second.id, first.id)

    store.services.set_running("text-classify", None)
    view = store.views.service("text-classify")
    assert view is not None
    assert (view.running_sha, view.running_revision) == (None, None)


def test_set_desired_refuses_foreign_revisions_and_unknown_services(store: Store) -> None:
    store.services.upsert("text-classify", "acme/models", "supervisor")
    other = store.history.add_revision(desired("image-tag"), author="a", message="m", manifest_text="")
    with pytest.raises(StoreError, match="not a revision of service 'text-classify'"):
        store.services.set_desired("text-classify", other.id)
    with pytest.raises(StoreError, match="'ghost' is not in the inventory"):
        store.services.set_running("ghost", other.id)


def test_last_good_revision(store: Store) -> None:
    first = store.history.add_revision(desired(model="v1"), author="a", message="m", manifest_text="")
    second = store.history.add_revision(desired(model="v2"), author="a", message="m", manifest_text="")
    third = store.history.add_revision(desired(model="v3"), author="a", message="m", manifest_text="")
    assert store.history.last_good_revision("text-classify") is None

    add_attempt(store, first.id, Outcome.SUCCEEDED)
    add_attempt(store, second.id, Outcome.SUCCEEDED)
    add_attempt(store, third.id, Outcome.FAILED)
    add_attempt(store, third.id, Outcome.ROLLED_BACK)
    assert store.history.last_good_revision("text-classify") == second
    assert store.history.last_good_revision("text-classify", exclude=second.id) == first
    assert store.history.last_good_revision("image-tag") is None


def test_failed_revision_follows_the_newest_finished_attempt(store: Store) -> None:
    bad = store.history.add_revision(desired(model="broken"), author="a", message="m", manifest_text="")
    assert not store.history.failed_revision("text-classify", bad.spec_hash)

    add_attempt(store, bad.id, Outcome.FAILED)
    assert store.history.failed_revision("text-classify", bad.spec_hash)
    assert not store.history.failed_revision("image-tag", bad.spec_hash)

    store.history.start_attempt("text-classify", bad.id, Trigger.POLL)  # still running: not an ending
    assert store.history.failed_revision("text-classify", bad.spec_hash)

    good = store.history.add_revision(desired(model="fixed"), author="a", message="m", manifest_text="")
    add_attempt(store, good.id, Outcome.SUCCEEDED)
    same_as_bad = store.history.add_revision(
        desired(model="broken", sha=SHA_B), author="a", message="m", manifest_text=""
    )
    assert same_as_bad.id != bad.id
    add_attempt(store, same_as_bad.id, Outcome.ROLLED_BACK)
    assert store.history.failed_revision("text-classify", bad.spec_hash)  # any revision row with that hash counts

    add_attempt(store, same_as_bad.id, Outcome.SUCCEEDED)
    assert not store.history.failed_revision("text-classify", bad.spec_hash)
    assert not store.history.failed_revision("text-classify", good.spec_hash)


# -- attempts and steps -----------------------------------------------------


def test_attempts_newest_first_with_ordered_steps(store: Store) -> None:
    revision = store.history.add_revision(desired(), author="a", message="m", manifest_text="")
    older = store.history.start_attempt("text-classify", revision.id, Trigger.STARTUP)
    newer = store.history.start_attempt("text-classify", revision.id, Trigger.WEBHOOK)
    for name in ("fetch", "build", "render", "start", "health"):
        store.history.add_step(newer, name, 0.5, name != "health", f"{name} output")
    store.history.finish_attempt(
        newer, Outcome.ROLLED_BACK, "RolledBack", "health gate failed", rolled_back_to=revision.id
    )

    attempts = store.history.attempts("text-classify")
    assert [attempt.id for attempt in attempts] == [newer, older]
    latest = attempts[0]
    assert [step.name for step in latest.steps] == ["fetch", "build", "render", "start", "health"]
    assert [step.ok for step in latest.steps] == [True, True, True, True, False]
    assert latest.steps[0].output_tail == "fetch output"
    assert latest.steps[0].duration == pytest.approx(0.5)
    assert (latest.outcome, latest.reason, latest.message) == (
        "rolled_back",
        "RolledBack",
        "health gate failed",
    )
    assert (latest.trigger, latest.revision, latest.rolled_back_to) == ("webhook", revision.id, revision.id)
    assert_utc(latest.started_at)
    assert_utc(latest.finished_at)
    assert latest.finished_at >= latest.started_at  # type: ignore[operator]
    assert attempts[1].outcome == "running"
    assert attempts[1].finished_at is None
    assert [attempt.id for attempt in store.history.attempts("text-classify", limit=1)] == [newer]
    assert store.history.attempts("other") == []


def test_step_output_keeps_only_the_last_4000_characters(store: Store) -> None:
    attempt = store.history.start_attempt("text-classify", None, Trigger.CLI)
    output = "early noise\n" * 1000 + "ERROR: the real reason"
    store.history.add_step(attempt, "build", 12.0, False, output)
    tail = store.history.attempts("text-classify")[0].steps[0].output_tail
    assert len(tail) == 4000
    assert tail.endswith("ERROR: the real reason")
    assert tail == output[-4000:]


def test_finish_unknown_attempt_is_an_error(store: Store) -> None:
    with pytest.raises(StoreError, match="attempt 424242 does not exist"):
        store.history.finish_attempt(424242, Outcome.FAILED, "ApplyFailed", "x")


def test_interrupt_running_attempts(store: Store) -> None:
    running = [store.history.start_attempt(name, None, Trigger.SCHEDULE) for name in ("a", "b")]
    done = add_attempt(store, None, Outcome.SUCCEEDED, service="a")
    assert store.history.interrupt_running_attempts() == 2
    assert store.history.interrupt_running_attempts() == 0

    by_id = {attempt.id: attempt for name in ("a", "b") for attempt in store.history.attempts(name)}
    for attempt_id in running:
        attempt = by_id[attempt_id]
        assert (attempt.outcome, attempt.reason) == ("interrupted", "Interrupted")
        assert_utc(attempt.finished_at)
    assert by_id[done].outcome == "succeeded"


# -- observations and read models -------------------------------------------


def test_service_views_content(store: Store) -> None:
    store.services.upsert("zeta", "repo", "docker")
    store.services.upsert("alpha", "repo", "supervisor")
    store.services.upsert("gone", "repo", "supervisor")
    store.services.mark_removed("gone")
    revision = store.history.add_revision(desired("alpha"), author="a", message="m", manifest_text="")
    store.services.set_desired("alpha", revision.id)
    store.services.set_running("alpha", revision.id)
    store.ports.allocate("alpha", BOUNDS, always_free)
    store.history.start_attempt("alpha", revision.id, Trigger.STARTUP)
    latest = store.history.start_attempt("alpha", revision.id, Trigger.WEBHOOK)
    store.history.add_step(latest, "health", 1.5, True)
    store.history.finish_attempt(latest, Outcome.SUCCEEDED, "ReconciliationSucceeded", "healthy")
    store.observations.record("alpha", "stopped", False, "exited")
    store.observations.record("alpha", "running", True, "pid 42")

    views = store.views.services()
    assert [view.name for view in views] == ["alpha", "zeta"]
    alpha, zeta = views
    assert (alpha.source, alpha.runtime, alpha.state, alpha.healthy, alpha.port) == (
        "repo",
        "supervisor",
        "running",
        True,
        8800,
    )
    assert (alpha.desired_sha, alpha.running_sha, alpha.override) == (SHA_A, SHA_A, None)
    assert alpha.last_attempt is not None
    assert alpha.last_attempt.id == latest
    assert [step.name for step in alpha.last_attempt.steps] == ["health"]
    assert_utc(alpha.observed_at)
    assert (zeta.state, zeta.healthy, zeta.port, zeta.last_attempt, zeta.observed_at) == (
        "pending",
        False,
        None,
        None,
        None,
    )
    assert store.views.service("alpha") == alpha
    assert store.views.service("gone") is None
    assert store.views.service("missing") is None


def test_service_views_empty(store: Store) -> None:
    assert store.views.services() == []


# -- ports ------------------------------------------------------------------


def test_allocate_is_lowest_unique_and_sticky(store: Store) -> None:
    assert store.ports.of("a") is None
    assert store.ports.allocate("a", BOUNDS, always_free) == 8800
    assert store.ports.allocate("b", BOUNDS, always_free) == 8801
    assert store.ports.allocate("a", BOUNDS, always_free) == 8800
    assert store.ports.allocate("a", BOUNDS, lambda port: False) == 8800  # sticky even if the host check fails
    assert store.ports.of("b") == 8801

    store.ports.release("a")
    assert store.ports.of("a") is None
    assert store.ports.allocate("c", BOUNDS, always_free) == 8800
    store.ports.release("never-had-one")


def test_allocate_honours_is_free(store: Store) -> None:
    probed: list[int] = []

    def host_check(port: int) -> bool:
        probed.append(port)
        return port not in (8800, 8801)

    assert store.ports.allocate("a", BOUNDS, host_check) == 8802
    assert probed == [8800, 8801, 8802]


def test_allocate_exhausted_range_names_the_range(store: Store) -> None:
    store.ports.allocate("a", (8800, 8801), always_free)
    with pytest.raises(PortConflict, match="no free port in 8800-8801") as caught:
        store.ports.allocate("b", (8800, 8801), lambda port: port != 8801)
    assert caught.value.reason is Reason.PORT_CONFLICT


def test_claim_port_conflict_names_the_other_service(store: Store) -> None:
    store.ports.claim("text-classify", 9000)
    with pytest.raises(PortConflict, match=r"port 9000 is already used by service 'text-classify'"):
        store.ports.claim("image-tag", 9000)
    store.ports.claim("text-classify", 9000)  # claiming your own port again is fine
    assert store.ports.of("text-classify") == 9000


def test_claim_port_replaces_the_previous_allocation(store: Store) -> None:
    assert store.ports.allocate("a", BOUNDS, always_free) == 8800
    store.ports.claim("a", 9100)
    assert store.ports.of("a") == 9100
    assert store.ports.allocate("b", BOUNDS, always_free) == 8800  # the old port is free again
    with pytest.raises(PortConflict, match="service 'a'"):
        store.ports.claim("b", 9100)
    assert store.ports.of("b") == 8800


def test_concurrent_allocations_get_distinct_ports(store: Store) -> None:
    threads_count = 8
    barrier = threading.Barrier(threads_count)
    results: dict[str, int] = {}
    errors: list[BaseException] = []

    def allocate(name: str) -> None:
        barrier.wait()
        try:
            results[name] = store.ports.allocate(name, BOUNDS, always_free)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=allocate, args=(f"svc-{n}",)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(results.values()) == list(range(8800, 8800 + threads_count))
    assert {name: store.ports.of(name) for name in results} == results


# -- time --------------------------------------------------------------------


def test_times_are_utc_aware_even_where_the_database_stores_naive(store: Store, raw: sa.Engine) -> None:
    attempt = store.history.start_attempt("text-classify", None, Trigger.CLI)
    store.history.finish_attempt(attempt, Outcome.SUCCEEDED, "ReconciliationSucceeded", "ok")
    store.observations.record("text-classify", "running", True)
    store.services.upsert("text-classify", "repo", "supervisor")
    view = store.views.service("text-classify")
    assert view is not None
    assert view.last_attempt is not None
    assert_utc(view.last_attempt.started_at)
    assert_utc(view.last_attempt.finished_at)
    assert_utc(view.observed_at)
    with raw.connect() as connection:
        stored = connection.execute(sa.text("SELECT started_at FROM attempts")).scalar_one()
    # What is on disk is UTC wall-clock time, whatever the process's local zone.
    as_text = stored if isinstance(stored, str) else stored.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert as_text.startswith(view.last_attempt.started_at.strftime("%Y-%m-%d %H:%M"))


# -- overrides and port grace (migration 0002) ----------------------------


def test_overrides_set_replace_clear_and_keep_history(store: Store) -> None:
    from deployer.model.status import OverrideKind

    store.services.upsert("svc", "src", "supervisor")
    revision = store.history.add_revision(desired("svc"), author="a", message="m", manifest_text="t")
    pin = store.overrides.set("svc", OverrideKind.PINNED, who="ops@host", why="bad model", revision_id=revision.id)
    assert (pin.kind, pin.revision, pin.who, pin.why, pin.active) == ("pinned", revision.id, "ops@host", "bad model",
                                                                       True)
    assert_utc(pin.created_at)
    assert store.views.service("svc").override == "pinned"  # type: ignore[union-attr]

    store.overrides.set("svc", OverrideKind.SUSPENDED, who="ops", why="maintenance")
    assert store.views.service("svc").override == "suspended"  # type: ignore[union-attr]
    assert set(store.overrides.active()["svc"]) == {OverrideKind.PINNED, OverrideKind.SUSPENDED}

    again = store.overrides.set("svc", OverrideKind.PINNED, who="ops2", revision_id=revision.id)
    assert store.overrides.active()["svc"][OverrideKind.PINNED].id == again.id

    assert store.overrides.clear("svc", OverrideKind.SUSPENDED, who="ops3") is True
    assert store.overrides.clear("svc", OverrideKind.SUSPENDED, who="ops3") is False
    assert store.overrides.clear("svc", OverrideKind.PINNED, who="ops3") is True
    assert store.views.service("svc").override is None  # type: ignore[union-attr]
    history = store.overrides.history("svc")
    assert [item.kind for item in history] == ["pinned", "suspended", "pinned"]
    assert all(not item.active for item in history)
    assert history[0].cleared_by == "ops3" and history[2].cleared_by == "ops2"


def test_pin_to_another_services_revision_is_refused(store: Store) -> None:
    from deployer.model.status import OverrideKind

    other = store.history.add_revision(desired("other"), author="a", message="m", manifest_text="t")
    with pytest.raises(StoreError, match="not a revision of service 'svc'"):
        store.overrides.set("svc", OverrideKind.PINNED, who="ops", revision_id=other.id)


def test_released_port_waits_out_its_grace_period(store: Store) -> None:
    first = store.ports.allocate("old", (9400, 9402), always_free)
    store.ports.release("old")
    assert store.ports.of("old") is None
    assert store.ports.allocate("new", (9400, 9402), always_free, grace=3600) != first
    assert store.ports.allocate("newer", (9400, 9402), always_free, grace=0) == first
    store.ports.release("newer")
    # The service that released it may take it back at once (a redeploy, not a new tenant).
    assert store.ports.allocate("newer", (9400, 9402), always_free, grace=3600) == first


def test_snapshot_round_trip(store: Store) -> None:
    assert store.observations.snapshot("svc") is None
    store.observations.record_snapshot("svc", logs_tail="x" * 5000 + "end", info={"version": "2.0"}, info_error="")
    snap = store.observations.snapshot("svc")
    assert snap is not None and snap.logs_tail.endswith("end") and len(snap.logs_tail) == 4000
    assert snap.info == {"version": "2.0"}
    assert_utc(snap.captured_at)
    store.observations.record_snapshot("svc", logs_tail="", info=None, info_error="HTTP 500")
    again = store.observations.snapshot("svc")
    assert again is not None and again.info is None and again.info_error == "HTTP 500"


def test_demo_runs_keep_the_newest_answer_per_input_and_revision(store: Store) -> None:
    first = store.history.add_revision(desired("svc", model="a"), author="a", message="m", manifest_text="t")
    second = store.history.add_revision(desired("svc", model="b"), author="a", message="m", manifest_text="t")
    common = {"content_type": "application/json", "body_file": None, "truncated": False, "problems": ""}
    store.demos.record("svc", first.id, None, name="short", ok=True, status=200, latency_ms=5.0, text="old", **common)
    store.demos.record("svc", first.id, None, name="short", ok=True, status=200, latency_ms=4.0, text="new", **common)
    store.demos.record("svc", second.id, 7, name="short", ok=False, status=500, latency_ms=9.0, text="x",
                      **{**common, "problems": "expected HTTP 200, got 500"})
    runs = store.demos.runs("svc")
    assert [view.text for view in runs[first.id]] == ["new"]
    assert runs[second.id][0].ok is False and runs[second.id][0].problems.startswith("expected")
    assert list(store.demos.runs("svc", revisions=1)) == [second.id]


def test_groups_come_from_the_desired_revision(store: Store) -> None:
    for name in ("b-svc", "a-svc", "solo"):
        store.services.upsert(name, "src", "supervisor")
        spec = desired(name).model_copy(update={"group": None if name == "solo" else "nlp"})
        revision = store.history.add_revision(spec, author="a", message="m", manifest_text="t")
        store.services.set_desired(name, revision.id)
    assert store.views.groups() == {"nlp": ["a-svc", "b-svc"]}


def test_demo_result_by_id_belongs_to_its_service(store: Store) -> None:
    revision = store.history.add_revision(desired("svc"), author="a", message="m", manifest_text="t")
    result = store.demos.record("svc", revision.id, None, name="x", ok=True, status=200, latency_ms=1.0,
                               content_type="image/png", text=None, body_file="demo/svc/1/x.png", truncated=False,
                               problems="")
    found = store.demos.result("svc", result)
    assert found is not None and found.body_file == "demo/svc/1/x.png"
    assert store.demos.result("other", result) is None and store.demos.result("svc", result + 99) is None


def test_deliveries_in_a_batch_and_the_dedupe_memory(store: Store) -> None:
    batch = [Delivery(f"d{i}", "push", "acme/x", "refs/heads/main", f"{i:040x}",
                      DeliveryResult.ACCEPTED if i % 2 else DeliveryResult.IGNORED, "why") for i in range(6)]
    store.deliveries.record(batch)
    assert len(store.deliveries.recent(10)) == 6
    assert store.deliveries.recent_accepted(2) == [("acme/x", "refs/heads/main", f"{5:040x}"),
                                        ("acme/x", "refs/heads/main", f"{3:040x}")]


def test_last_delivery_per_repository_counts_signed_pushes_only(store: Store) -> None:
    store.deliveries.record([Delivery("d-1", "push", "acme/models", "refs/heads/main", SHA_A,
                                      DeliveryResult.REJECTED, "401: wrong signature")])
    assert store.deliveries.last_by_repository() == {}
    store.deliveries.record([Delivery("d-2", "push", "Acme/Models", "refs/tags/v1", SHA_A, DeliveryResult.IGNORED,
                                      "tag push"),
                             Delivery("d-3", "push", "acme/other", "refs/heads/main", SHA_B,
                                      DeliveryResult.DUPLICATE, "seen")])
    last = store.deliveries.last_by_repository()
    assert set(last) == {"acme/models", "acme/other"}
    assert_utc(last["acme/models"])


def test_a_stopped_override_is_kept_and_cleared_like_the_others(store: Store) -> None:
    from deployer.model.status import OverrideKind

    store.overrides.set("svc", OverrideKind.STOPPED, who="ada", why="free the GPU")
    store.overrides.set("svc", OverrideKind.SUSPENDED, who="bob")
    assert set(store.overrides.active()["svc"]) == {OverrideKind.STOPPED, OverrideKind.SUSPENDED}
    assert store.overrides.clear("svc", OverrideKind.STOPPED, who="cy")
    assert set(store.overrides.active()["svc"]) == {OverrideKind.SUSPENDED}
