"""The review screen with instances in a real browser (Playwright, Debian's Chromium): each
instance's short prompt with a badge per condition type, the cross-check flags highlighted
and listed, the suitability per type; an instance prompt edited with the keyboard and
accepted lands in the store under ``short_prompt:<instance key>``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from any2capins.workflows.review import ReviewStore, open_store
from any2capins.workflows.review.app import create_app
from tests.instance_fixtures import FLAGS, PROMPTS, make_instance_run, record_by_index
from tests.review_fixtures import CHROMIUM, live_server
from tests.test_review_browser import LAUNCH_ARGS, PASSWORD, _login, _require_browser

# Set to a folder to keep a screenshot of the screen (docs/review-instances.png was made so).
SCREENSHOT_DIR = os.environ.get("A2C_REVIEW_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _require_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ReviewStore, Path]]:
    run = make_instance_run(tmp_path_factory.mktemp("instances-browser") / "run")
    store = open_store(str(run))
    store.ingest()
    store.add_user("ann", "annotator", PASSWORD)
    store.add_user("rev", "reviewer", PASSWORD)
    with live_server(create_app(store)) as base:
        yield base, store, run


def test_instance_prompts_flags_and_keyboard_edit(
    browser: Any, served: tuple[str, ReviewStore, Path]
) -> None:
    base, store, run = served
    context, page = _login(browser, base, "ann")
    page.keyboard.press("n")
    page.wait_for_url("**/review/items/*")
    page.wait_for_load_state("load")
    item_id = int(page.url.rsplit("/", 1)[1])
    item_url = page.url
    first = record_by_index(run, 0)
    assert store.item(next(u for u, _ in store.users() if u.name == "rev"), item_id).clip_id == (
        first.clip_id
    )

    # one field per instance, with its condition types as badges
    prompts = page.locator(".field.instance")
    assert prompts.count() == 4
    names = [prompts.nth(i).get_attribute("data-field") for i in range(4)]
    assert names == [f"short_prompt:{k}" for k in ("camera", "depth", "identities", "camera+depth")]
    composed = page.locator('.field[data-field="short_prompt:camera+depth"]')
    assert composed.locator(".ctype").all_inner_texts() == ["camera", "depth"]
    assert composed.locator(".composition").is_visible()
    assert composed.locator("textarea").input_value() == PROMPTS["camera+depth"]
    assert composed.locator("[data-count]").inner_text() == (
        f"{len(PROMPTS['camera+depth'].split())} words"
    )
    assert page.locator('.field[data-field="short_prompt"]').count() == 0

    # flags: the components' fields highlighted, the words marked, every flag listed
    for flag in FLAGS:
        field = page.locator(f'.field[data-field="{flag.component}"]')
        assert "flagged" in (field.get_attribute("class") or "")
        assert flag.fact in field.locator("[data-flags]").inner_text()
    assert page.locator('.field[data-field="camera"] mark').inner_text() == FLAGS[0].words
    assert page.locator(".checks li").count() == 2
    assert "flagged" not in (
        page.locator('.field[data-field="dense"]').get_attribute("class") or ""
    )
    # suitability per condition type
    pose = page.locator('.suit[data-condition="pose"]')
    assert "suit-no" in (pose.get_attribute("class") or "")
    assert "not suitable" in pose.inner_text() and "no person visible" in pose.inner_text()
    assert page.locator(".suit.suit-yes").count() == 3

    # field 8 is the depth instance's prompt: edit it with the keyboard
    page.keyboard.press("8")
    assert page.evaluate("document.activeElement.name") == "field_short_prompt:depth"
    page.keyboard.press("Control+A")
    page.keyboard.type("A grey square hovers far in front of a flat glowing wall.")
    depth = page.locator('.field[data-field="short_prompt:depth"]')
    assert depth.locator("[data-count]").inner_text() == "12 words"
    assert depth.locator("[data-diff] ins").count() >= 3, "the diff shows the new words"
    assert depth.locator("[data-diff] del").count() >= 1
    assert "Accept with 1 edit" in page.inner_text("#btn-accept")
    if SCREENSHOT_DIR:
        page.set_viewport_size({"width": 1400, "height": 1830})  # the whole text column
        page.locator(".text-col").evaluate("el => el.scrollTop = 0")
        page.wait_for_timeout(200)
        page.screenshot(path=str(Path(SCREENSHOT_DIR) / "review-instances.png"))
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    page.wait_for_url(lambda url: url != item_url)
    assert page.errors == []

    final = store.final_states()[first.clip_id]
    assert final.state == "edited"
    assert final.edits == {
        "short_prompt:depth": "A grey square hovers far in front of a flat glowing wall."
    }
    context.close()
