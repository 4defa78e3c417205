"""Persistent state and history: SQLAlchemy tables, Alembic migrations, one part per thing stored.

``Store`` only holds the parts; callers reach a part by what it stores
(``store.history.add_revision``, ``store.ports.allocate``, ``store.views.service``).
Every part returns model values and raises ``StoreError`` (never a SQLAlchemy
exception). The same code runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable

from deployer.store.demos import Demos
from deployer.store.engine import Database, StoreConflictError, StoreError
from deployer.store.history import History
from deployer.store.overrides import Overrides
from deployer.store.ports import Ports
from deployer.store.services import Observations, Services
from deployer.store.slots import Slots
from deployer.store.sources import Deliveries, Delivery, DeliveryView, SourceRecord, Sources
from deployer.store.views import NEVER_OBSERVED, Views

__all__ = ["NEVER_OBSERVED", "Delivery", "DeliveryView", "SourceRecord", "Store", "StoreConflictError",
           "StoreError"]


class Store:
    """The database and its parts, built once by the composition root and shared by every thread.

    ``redact`` is applied to every text that may carry service output (step outputs,
    messages, observations, snapshots, demo answers): no secret value is ever written.
    """

    def __init__(self, url: str, *, redact: Callable[[str], str] = str) -> None:
        self.db = Database(url)
        self.sources = Sources(self.db)
        self.deliveries = Deliveries(self.db)
        self.services = Services(self.db)
        self.history = History(self.db, redact)
        self.observations = Observations(self.db, redact)
        self.ports = Ports(self.db)
        self.slots = Slots(self.db)
        self.overrides = Overrides(self.db)
        self.demos = Demos(self.db, redact)
        self.views = Views(self.db)

    def migrate(self) -> None:
        self.db.migrate()

    def ping(self) -> None:
        self.db.ping()

    def close(self) -> None:
        self.db.close()
