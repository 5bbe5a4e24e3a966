"""The review app in a real browser: Playwright driving Debian's Chromium headless.

Log in, claim with the keyboard, edit a component, accept with the keyboard and find the
decision and its audit rows in the store; two browser contexts never see the same item;
XSS payloads in captions and labels stay inert; a user without the role gets 403; the
player steps frames and keeps the condition panes in sync.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from any2capins.workflows.review import ReviewStore, open_store
from any2capins.workflows.review.app import create_app
from tests.review_fixtures import CHROMIUM, IN_CI, live_server, make_run

PASSWORD = "correct-horse-battery"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _require_browser() -> Any:
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "the playwright package is not installed (pip install -e '.[dev]')"
    if problem is None and not os.access(CHROMIUM, os.X_OK):
        problem = f"{CHROMIUM} is missing (tools/ensure_services.sh installs Debian's chromium)"
    if problem is not None:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)
    return sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _require_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ReviewStore]]:
    run = make_run(tmp_path_factory.mktemp("browser") / "run", n=8, xss=True)
    store = open_store(str(run))
    store.ingest()
    for name, role in (
        ("ann", "annotator"),
        ("bob", "annotator"),
        ("cid", "annotator"),
        ("dee", "annotator"),
        ("rev", "reviewer"),
    ):
        store.add_user(name, role, PASSWORD)
    with live_server(create_app(store)) as base:
        yield base, store


def _login(browser: Any, base: str, name: str) -> tuple[Any, Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 950})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    page.goto(f"{base}/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/review")
    page.wait_for_load_state("load")
    return context, page


def _wait_until(page: Any, expression: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript expression from Python until it is truthy.

    Not ``page.wait_for_function``: it compiles a string predicate with ``eval`` inside
    the page, which Chromium allows only in the synchronous part of the DevTools call.
    When the predicate is still false and is polled again later, the app's CSP (no
    'unsafe-eval') refuses it, so that wait failed only on a slow machine (CI, session 3).
    ``page.evaluate`` runs each check as its own DevTools call.
    """
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout:.0f} s: {expression}")
        time.sleep(0.05)


def _claim_with_keyboard(page: Any) -> int:
    page.keyboard.press("n")
    page.wait_for_url("**/review/items/*")
    page.wait_for_load_state("load")
    return int(page.url.rsplit("/", 1)[1])


def test_keyboard_edit_and_accept_lands_in_the_store(
    browser: Any, served: tuple[str, ReviewStore]
) -> None:
    base, store = served
    context, page = _login(browser, base, "ann")
    item_id = _claim_with_keyboard(page)
    item_url = page.url
    assert page.is_visible("#lease")
    page.keyboard.press("2")
    assert page.evaluate("document.activeElement.id") == "field-main_object"
    page.keyboard.press("Control+A")
    page.keyboard.type("A flat grey square with crisp edges.")
    field = page.locator('.field[data-field="main_object"]')
    assert field.locator("[data-count]").inner_text() == "7 words"
    assert field.locator("[data-diff] ins").count() >= 3, "the diff shows the new words"
    assert "Accept with 1 edit" in page.inner_text("#btn-accept")
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    page.wait_for_url(lambda url: url != item_url)
    assert page.errors == []

    view = store.item(next(u for u, _ in store.users() if u.name == "rev"), item_id)
    assert view.state == "edited"
    assert view.final_edits == {"main_object": "A flat grey square with crisp edges."}
    trail = [(a.actor, a.action) for a in store.audit(item_id)]
    assert trail == [("ingest", "ingest"), ("ann", "claim"), ("ann", "review"), ("system", "final")]
    review = store.audit(item_id)[2]
    assert review.after["decision"] == "edit" and review.before["version"] == 1
    context.close()


def test_two_browser_contexts_never_see_the_same_item(
    browser: Any, served: tuple[str, ReviewStore]
) -> None:
    base, store = served
    (ctx1, p1), (ctx2, p2) = _login(browser, base, "bob"), _login(browser, base, "cid")
    # Both ask at once: the second keypress goes out before the first page has loaded.
    p1.keyboard.press("n")
    p2.keyboard.press("n")
    p1.wait_for_url("**/review/items/*")
    p2.wait_for_url("**/review/items/*")
    first, second = (int(p.url.rsplit("/", 1)[1]) for p in (p1, p2))
    assert first != second
    holders = {c.item_id: c.user for c in store.claims()}
    assert holders[first] == "bob" and holders[second] == "cid"
    # Reloading gives each their own lease back, never the other's.
    p1.goto(f"{base}/review")
    assert int(p1.url.rsplit("/", 1)[1]) == first
    # Skip with the keyboard: the next item is a third one.
    p1.wait_for_load_state("load")
    p1.keyboard.press("s")
    p1.wait_for_url(lambda url: not url.endswith(f"/{first}"))
    assert int(p1.url.rsplit("/", 1)[1]) not in (first, second)
    ctx1.close()
    ctx2.close()


def test_xss_payloads_render_inert(browser: Any, served: tuple[str, ReviewStore]) -> None:
    base, store = served
    context, page = _login(browser, base, "rev")
    csp_violations: list[str] = []
    page.on(
        "console",
        lambda m: csp_violations.append(m.text) if "Content Security Policy" in m.text else None,
    )
    rev = next(u for u, _ in store.users() if u.name == "rev")
    item_id = next(
        i
        for i in range(1, 9)
        if (caption := store.item(rev, i).record.caption) is not None
        and "<script>" in caption.dense
    )
    response = page.goto(f"{base}/review/items/{item_id}")
    assert response.status == 200
    page.wait_for_load_state("load")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None
    assert page.title() != "pwned"
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert "<script>" in page.input_value("#field-dense")
    assert "<img src=x onerror" in page.input_value("#field-style")
    labels = page.locator('.pane[data-condition="identities"] .labels').inner_text()
    assert "<img src=x onerror" in labels, "labels show the payload as text"
    assert "<img src=x" in page.inner_text('.pane[data-condition="camera"] .description')
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.errors == []
    context.close()


def test_user_without_the_role_gets_403(browser: Any, served: tuple[str, ReviewStore]) -> None:
    base, _ = served
    context, page = _login(browser, base, "dee")
    for path in ("/dashboard", "/admin"):
        response = page.goto(f"{base}{path}")
        assert response.status == 403
        assert "needs the" in page.inner_text("main")
    assert (
        page.evaluate("fetch('/api/stats', {credentials: 'same-origin'}).then(r => r.status)")
        == 403
    )
    context.close()
    context, page = _login(browser, base, "rev")
    assert page.goto(f"{base}/dashboard").status == 200
    assert "Edit rate per component" in page.inner_text("main")
    context.close()


def test_player_steps_frames_and_panes_follow(
    browser: Any, served: tuple[str, ReviewStore]
) -> None:
    base, _ = served
    context, page = _login(browser, base, "rev")
    # Item 1 has every condition: depth and pose previews are videos that must follow.
    page.goto(f"{base}/review/items/1")
    video = "document.getElementById('main-video')"
    _wait_until(page, f"{video}.readyState >= 2", timeout=15)
    start = page.evaluate(f"{video}.currentTime")
    page.keyboard.press(".")
    page.keyboard.press(".")
    _wait_until(page, f"Math.abs({video}.currentTime - {start} - 2/12) < 0.02")
    page.keyboard.press(",")
    _wait_until(page, f"Math.abs({video}.currentTime - {start} - 1/12) < 0.02")
    page.keyboard.press(" ")
    _wait_until(page, f"!{video}.paused")
    panes = "Array.from(document.querySelectorAll('video.sync'))"
    assert page.evaluate(f"{panes}.length") >= 2  # depth and pose previews
    # the panes start with the main video: waited for, not timed (CI machines are slow)
    _wait_until(page, f"{panes}.every(v => !v.paused)", timeout=15)
    page.keyboard.press("k")
    _wait_until(page, f"{video}.paused")
    page.keyboard.press("]")
    assert page.evaluate(f"{video}.playbackRate") == 1.5
    page.keyboard.press("o")
    assert page.evaluate("document.getElementById('pose-overlay').hidden") is True
    page.keyboard.press("?")
    assert page.is_visible("#help")
    page.keyboard.press("Escape")
    assert not page.is_visible("#help")
    assert page.errors == []
    context.close()
