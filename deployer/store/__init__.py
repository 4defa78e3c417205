"""Persistent state and history: SQLAlchemy tables, Alembic migrations, typed queries.

``Store`` is the only way in; it returns model values and raises ``StoreError``
(never a SQLAlchemy exception). The same code runs on SQLite and PostgreSQL.
"""

from deployer.store.store import DeliveryView, SourceRecord, Store, StoreConflictError, StoreError

__all__ = ["DeliveryView", "SourceRecord", "Store", "StoreConflictError", "StoreError"]
