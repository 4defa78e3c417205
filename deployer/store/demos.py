"""Demo answers: what each demo input got back, per revision and attempt, for the gate and the pages.

Text answers are rows (redacted like all service output); binary answers are files
under the state dir and only their relative path is stored here.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from deployer.model.status import DemoView
from deployer.store.engine import Database
from deployer.store.tables import DemoResultRow, utcnow


class Demos:
    def __init__(self, db: Database, redact: Callable[[str], str]) -> None:
        self._db = db
        self._redact = redact

    def record(self, service: str, revision_id: int | None, attempt_id: int | None, *, name: str, ok: bool,
               status: int | None, latency_ms: float | None, content_type: str, text: str | None,
               body_file: str | None, truncated: bool, problems: str) -> int:
        row = DemoResultRow(service=service, revision_id=revision_id, attempt_id=attempt_id, name=name, ok=ok,
                            status=status, latency_ms=latency_ms, content_type=content_type[:200],
                            text=self._redact(text) if text is not None else None, body_file=body_file,
                            truncated=truncated, problems=self._redact(problems), created_at=utcnow())
        with self._db.transaction("record_demo", write=True) as session:
            session.add(row)
            session.flush()
            return row.id

    def runs(self, service: str, *, revisions: int = 5) -> dict[int | None, list[DemoView]]:
        """The newest answer per demo input for each of the service's last ``revisions`` revisions with demos."""
        query = select(DemoResultRow).where(DemoResultRow.service == service).order_by(DemoResultRow.id.desc())
        runs: dict[int | None, dict[str, DemoView]] = {}
        with self._db.transaction("demo_runs") as session:
            for row in session.scalars(query.limit(2000)):
                if row.revision_id not in runs and len(runs) >= revisions:
                    continue
                runs.setdefault(row.revision_id, {}).setdefault(row.name, _demo_view(row))
        return {revision: sorted(by_name.values(), key=lambda view: view.name) for revision, by_name in runs.items()}

    def result(self, service: str, result_id: int) -> DemoView | None:
        """One recorded answer of ``service`` (None for another service's id)."""
        with self._db.transaction("demo_result") as session:
            row = session.get(DemoResultRow, result_id)
            return _demo_view(row) if row is not None and row.service == service else None


def _demo_view(row: DemoResultRow) -> DemoView:
    return DemoView(id=row.id, service=row.service, revision=row.revision_id, name=row.name, ok=row.ok,
                    status=row.status, latency_ms=row.latency_ms, content_type=row.content_type, text=row.text,
                    body_file=row.body_file, truncated=row.truncated, problems=row.problems,
                    created_at=row.created_at)
