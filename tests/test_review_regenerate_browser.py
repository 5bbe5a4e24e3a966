"""Reject -> regenerate, end to end: in Chromium, with the keyboard only, a reviewer accepts
two fields, fixes one and rejects one with a reason and a note; ``any2cap captions
regenerate`` then asks the test OpenAI-compatible server (real HTTP) for that field only,
with the reason, the note and the rejected text in the request; the record changes in that
field alone, and the item comes back to the queue as revision 2, which the page shows."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from any2capins.pipeline.rundir import RunDir
from any2capins.schemas import Record
from any2capins.workflows.cli import app
from any2capins.workflows.review import ReviewStore, final_states, open_store
from any2capins.workflows.review.app import create_app
from any2capins.workflows.review.text import machine_texts
from tests.openai_server import FakeOpenAI
from tests.review_fixtures import CHROMIUM, live_server, make_run
from tests.test_review_browser import LAUNCH_ARGS, _require_browser

PASSWORD = "correct-horse-battery"
FIX = " It never changes."
NOTE = "the camera does not move at all"
SHOTS = os.environ.get("ANY2CAP_REVIEW_SCREENSHOTS")  # a folder: keep the pages as PNG

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, ReviewStore, str, FakeOpenAI, Any]]:
    sync_playwright = _require_browser()
    tmp = tmp_path_factory.mktemp("regenerate")
    run = make_run(tmp / "run", n=2, conditions=False)
    with FakeOpenAI() as server:
        rundir = RunDir(str(run))
        info = rundir.load_info()
        assert info is not None
        params = {"writer": "openai", "model": "test-model", "base_url": server.base_url}
        info.recipe["stages"] = [
            {"annotator": "captions", "params": {**params, "cache_dir": str(tmp / "cache")}}
        ]
        rundir.save_info(info)
        store = open_store(str(run))
        store.ingest()
        store.add_user("ann", "annotator", PASSWORD)
        with live_server(create_app(store)) as base, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            yield run, store, base, server, browser
            browser.close()


def _record(run: Path, clip_id: str) -> Record:
    return Record.model_validate_json((run / "records" / f"{clip_id}.json").read_text())


def test_keyboard_verdicts_then_regenerate_requeues_revision_2(
    setup: tuple[Path, ReviewStore, str, FakeOpenAI, Any],
) -> None:
    run, store, base, server, browser = setup
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}/login")
    page.fill("input[name=name]", "ann")
    page.fill("input[name=password]", PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/review")
    page.keyboard.press("n")
    page.wait_for_url(f"{base}/review/items/*")
    item_id = int(page.url.rsplit("/", 1)[1])
    clip_id = store.audit(item_id)[0].clip_id
    before = _record(run, clip_id)
    machine = machine_texts(before)

    # J selects dense; A accepts it and moves on; A accepts main_object; E edits background
    for key in ("j", "a", "a", "e"):
        page.keyboard.press(key)
    assert page.evaluate("document.activeElement.name") == "field_background"
    page.keyboard.press("End")
    page.keyboard.type(FIX)
    page.keyboard.press("Escape")
    # J to camera; R rejects it: type the reason's first letters, Enter, the note, Enter
    page.keyboard.press("j")
    page.keyboard.press("r")
    assert page.evaluate("document.activeElement.name") == "reason_camera"
    page.keyboard.type("hal")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.name") == "note_camera"
    page.keyboard.type(NOTE)
    page.keyboard.press("Enter")
    # fields without a verdict are accepted on submit
    assert page.inner_text("#btn-accept").startswith("Submit: 5 accepted, 1 fixed, 1 rejected")
    badges = page.eval_on_selector_all(
        ".field [data-verdict-badge]:not([hidden])",
        "els => els.map(e => [e.closest('.field').dataset.field, e.textContent])",
    )
    assert badges == [
        ["dense", "accepted"],
        ["main_object", "accepted"],
        ["background", "fixed"],
        ["camera", "rejected"],
    ]
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, "review-verdicts.png"), full_page=False)
    page.keyboard.press("Control+Enter")
    page.wait_for_url(lambda url: not url.endswith(f"/items/{item_id}"))

    state = final_states(store)[clip_id]
    assert state.queue_state == "regenerate"
    (review,) = state.reviews
    verdicts = {name: v.verdict for name, v in review.verdicts.items()}
    assert verdicts == {
        "dense": "accept",
        "main_object": "accept",
        "background": "fix",
        "camera": "reject",
        "style": "accept",
        "action": "accept",
        "short_prompt": "accept",
    }
    assert review.verdicts["camera"].reason == "hallucination"
    assert review.verdicts["camera"].note == NOTE
    assert review.verdicts["background"].text == machine["background"] + FIX

    # any2cap captions regenerate: real HTTP to the test server
    server.bodies.clear()
    result = CliRunner().invoke(app, ["captions", "regenerate", "--run", str(run), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["requeued"][0]["fields"] == ["camera"] and report["requeued"][0]["revision"] == 2
    assert [server.component_of(b) for b in server.bodies] == ["camera"]
    sent = json.dumps(server.bodies[0])
    assert "hallucination" in sent and NOTE in sent
    assert json.dumps(machine["camera"])[1:-1] in sent  # the rejected text, as JSON escapes it

    after = _record(run, clip_id)
    new = machine_texts(after)
    assert new["camera"] != machine["camera"]
    assert {n: t for n, t in new.items() if n != "camera"} == {
        n: t for n, t in machine.items() if n != "camera"
    }
    assert before.caption is not None and after.caption is not None
    for name in ("dense", "main_object", "background", "style", "action"):
        assert getattr(after.caption, name) == getattr(before.caption, name)  # byte-identical
    assert after.provenance.stages[-1].stage == "regenerate"
    # the run and the store agree: a re-ingest sees nothing new
    assert store.ingest().unchanged == 2
    again = final_states(store)[clip_id]
    assert (again.state, again.queue_state, again.revision) == ("pending", "pending", 2)
    audit = [a for a in store.audit(item_id) if a.action == "regenerated"]
    assert audit and audit[-1].after["from_revision"] == 1

    # the other item first (it is leased to ann now), then revision 2 comes back to ann
    page.keyboard.press("a")
    page.wait_for_url(f"{base}/review/items/{item_id}")
    assert page.inner_text("#revision") == "revision 2"
    why = page.inner_text("#regenerated")
    assert "hallucination" in why and NOTE in why and machine["camera"] in why
    assert page.input_value("textarea[name=field_camera]") == new["camera"]
    # the fix of revision 1 is carried into revision 2's page
    assert page.input_value("textarea[name=field_background]") == machine["background"] + FIX
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, "review-regenerated.png"), full_page=False)
    assert errors == []
    context.close()
