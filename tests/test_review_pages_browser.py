"""The dashboard, review and admin pages in a real browser show text, never Python reprs.

The dashboard's first line once read ``<built-in method items of dict object at 0x...>
items`` (the template asked for ``stats.items``, the dict's method); the admin page showed
the policy's ``sample`` as ``{'default': 1.0}`` and its reject reasons as a Python list. A review with edits and a reject, then every page read in Chromium.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from any2capins.workflows.review import ReviewStore, open_store
from any2capins.workflows.review.app import create_app
from tests.instance_fixtures import make_instance_run
from tests.review_fixtures import live_server
from tests.test_review_browser import PASSWORD, _login, browser  # noqa: F401 (fixture)

# What a Python object leaking into a page looks like (raw and HTML-escaped).
REPRS = ("<built-in", "&lt;built-in", "object at 0x", "{'", "{&#39;", "{&#x27;", "['", "[&#39;")


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ReviewStore]]:
    run = make_instance_run(tmp_path_factory.mktemp("pages") / "run", n=4)
    store = open_store(str(run))
    assert store.ingest().added == 4
    ann = store.add_user("ann", "annotator", PASSWORD)
    store.add_user("adm", "admin", PASSWORD)
    # an edit of a component and an instance prompt, then a reject; two items stay pending
    first = store.claim(ann)
    assert first is not None and first.record.instances
    prompt_field = "short_prompt:" + first.record.instances[0].key
    store.decide(
        ann,
        first.id,
        "edit",
        first.version,
        edits={"dense": "A person edits this dense caption.", prompt_field: "A human prompt."},
    )
    second = store.claim(ann)
    assert second is not None
    store.decide(ann, second.id, "reject", second.version, reason="hallucination", note="n")
    with live_server(create_app(store)) as base:
        yield base, store


def _no_repr(page: Any, where: str) -> None:
    html = page.content()
    text = page.inner_text("body")
    for needle in REPRS:
        assert needle not in html, f"{where}: {needle!r} in the HTML"
        assert needle not in text, f"{where}: {needle!r} in the text"
    assert not re.search(r"0x[0-9a-f]{6,}", text), f"{where}: an address in the text"


def test_dashboard_counts_and_no_python_reprs(
    browser: Any,  # noqa: F811 (the fixture)
    reviewed: tuple[str, ReviewStore],
) -> None:
    base, store = reviewed
    context, page = _login(browser, base, "adm")
    assert page.errors == []

    response = page.goto(f"{base}/dashboard")
    assert response.status == 200
    line = page.locator("main > p").first.inner_text()
    assert line == "4 items · 2 independent reviews · 0 adjudications · 0 live leases", line
    assert store.stats()["items"] == 4
    _no_repr(page, "/dashboard")

    pages = ["/review", "/admin"] + [f"/review/items/{i}" for i in range(1, 5)]
    for path in pages:
        response = page.goto(f"{base}{path}")
        assert response.status == 200, path
        page.wait_for_load_state("load")
        _no_repr(page, path)
    # the admin page shows the policy as text
    page.goto(f"{base}/admin")
    facts = page.locator("dl.facts").inner_text()
    assert "default: 1.0" in facts and "hallucination" in facts
    assert page.errors == []
    context.close()
