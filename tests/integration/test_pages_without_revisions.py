"""A service the store knows but that has no revision yet (its manifest entry never resolved, or a
pass is recording it right now) still has a service page and a showcase: empty, never an error."""

from __future__ import annotations

from pathlib import Path

from deployer.demo import DemoLimits
from deployer.store import Store
from deployer.web.presenters import service_detail
from deployer.web.showcase import Showcase


def test_a_service_with_no_revision_has_an_empty_history_not_an_error(store: Store, tmp_path: Path) -> None:
    store.services.upsert("lonely", "acme/models", "supervisor")
    detail = service_detail(store, "lonely")
    assert detail is not None and detail.timeline == []
    view = store.views.service("lonely")
    assert view is not None
    table = Showcase(store, tmp_path, DemoLimits()).revision_table(view)
    assert table.columns == []
