"""Instance prompts in the review store and the JSON API: one edit field per instance
(``short_prompt:<instance key>``), refused for records without that instance; the review
screen shows each instance's condition types, the cross-check flags and the suitability;
statistics count instance prompts; ``apply_review`` is the one way edits apply."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from any2capins.schemas import Record
from any2capins.workflows.review import (
    Invalid,
    ItemView,
    ReviewPolicy,
    ReviewStore,
    UserInfo,
    apply_review,
    field_names,
    open_store,
    review_stats,
)
from any2capins.workflows.review.app import create_app
from any2capins.workflows.review.text import machine_texts, word_diff
from tests.instance_fixtures import FLAGS, PROMPTS, make_instance_run, record_by_index
from tests.review_fixtures import CAPTION, SHORT_PROMPT, fresh_pg_database, make_run

COMPONENTS = ("dense", "main_object", "background", "camera", "style", "action")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    with fresh_pg_database("instances") as url:
        yield url


def _claim_clip(store: ReviewStore, user: UserInfo, clip_id: str) -> ItemView:
    """Claim until ``user`` holds ``clip_id`` (others are skipped back to the queue)."""
    for _ in range(10):
        view = store.claim(user)
        assert view is not None
        if view.clip_id == clip_id:
            return view
        store.skip(user, view.id)
    raise AssertionError(f"{clip_id} never came up")


def test_fields_follow_the_instances(tmp_path: Path) -> None:
    run = make_instance_run(tmp_path / "run")
    record = record_by_index(run, 0)
    assert field_names(record) == (
        *COMPONENTS,
        "short_prompt:camera",
        "short_prompt:depth",
        "short_prompt:identities",
        "short_prompt:camera+depth",
    )
    machine = machine_texts(record)
    assert machine["short_prompt:camera+depth"] == PROMPTS["camera+depth"]
    assert "short_prompt" not in machine
    # planned, none suitable: the six components only; no planning: the one short prompt
    assert field_names(record_by_index(run, 3)) == COMPONENTS
    make_run(tmp_path / "legacy", n=1)
    legacy_record = Record.model_validate_json(
        next((tmp_path / "legacy" / "records").glob("*.json")).read_text()
    )
    assert field_names(legacy_record) == (*COMPONENTS, "short_prompt")


def test_apply_review_is_the_one_way_edits_apply(tmp_path: Path) -> None:
    record = record_by_index(make_instance_run(tmp_path / "run"), 0)
    final = apply_review(
        record, {"short_prompt:camera+depth": "A human prompt.", "style": "Flat colours."}
    )
    assert final.instances is not None
    assert [i.short_prompt for i in final.instances] == [
        PROMPTS["camera"],
        PROMPTS["depth"],
        PROMPTS["identities"],
        "A human prompt.",
    ]
    assert final.caption is not None and final.caption.style == "Flat colours."
    assert final.caption.dense == record.caption.dense  # type: ignore[union-attr]
    assert record.instances[3].short_prompt == PROMPTS["camera+depth"]  # type: ignore[index]
    with pytest.raises(ValueError, match="short_prompt:pose"):
        apply_review(record, {"short_prompt:pose": "no such instance"})
    with pytest.raises(ValueError, match="no field short_prompt;"):
        apply_review(record, {"short_prompt": "the old single prompt"})


def test_store_accepts_instance_fields_and_refuses_unknown_ones(
    tmp_path: Path, db_url: str | None
) -> None:
    run = make_instance_run(tmp_path / "run")
    store = open_store(str(run), db_url)
    store.ingest()
    user = store.add_user("ann", "annotator", None)
    first = record_by_index(run, 0)
    view = _claim_clip(store, user, first.clip_id)
    assert view.machine["short_prompt:camera"] == PROMPTS["camera"]
    for bad, why in (
        ({"short_prompt:pose": "x."}, "has no field 'short_prompt:pose'"),
        ({"short_prompt": "x."}, "has no field 'short_prompt'"),
        ({"short_prompt:": "x."}, "unknown field"),
        ({"caption": "x."}, "unknown field"),
    ):
        with pytest.raises(Invalid, match=why):
            store.decide(user, view.id, "edit", view.version, edits=bad)
    edited = "Trucking right past a grey square that stays well in front of the gradient."
    result = store.decide(
        user, view.id, "edit", view.version, edits={"short_prompt:camera+depth": edited}
    )
    assert result.state == "edited"
    final = store.final_states()[first.clip_id]
    assert final.edits == {"short_prompt:camera+depth": edited}
    # a record whose instances were planned but none suits: components only
    empty = record_by_index(run, 3)
    view = _claim_clip(store, user, empty.clip_id)
    with pytest.raises(Invalid, match="short_prompt:camera"):
        store.decide(user, view.id, "edit", view.version, edits={"short_prompt:camera": "x."})
    assert store.decide(user, view.id, "accept", view.version).state == "accepted"


def test_legacy_records_keep_the_single_short_prompt(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", n=2)
    store = open_store(str(run))
    store.ingest()
    user = store.add_user("ann", "annotator", None)
    view = store.claim(user)
    assert view is not None and view.machine["short_prompt"] == SHORT_PROMPT
    with pytest.raises(Invalid, match="has no field 'short_prompt:camera'"):
        store.decide(user, view.id, "edit", view.version, edits={"short_prompt:camera": "x."})
    result = store.decide(user, view.id, "edit", view.version, edits={"short_prompt": "New."})
    assert result.state == "edited"


def test_stats_and_overlap_count_instance_prompts(tmp_path: Path) -> None:
    run = make_instance_run(tmp_path / "run")
    policy = ReviewPolicy(overlap_fraction=1.0, overlap_reviews=2)
    store = open_store(str(run), policy=policy)
    store.ingest()
    ann, bob = (store.add_user(n, "annotator", None) for n in ("ann", "bob"))
    first = record_by_index(run, 0)
    a = _claim_clip(store, ann, first.clip_id)
    store.decide(ann, a.id, "edit", a.version, edits={"short_prompt:camera": "Camera one."})
    b = _claim_clip(store, bob, first.clip_id)
    store.decide(bob, b.id, "edit", b.version, edits={"short_prompt:camera": "Camera two."})
    # the two reviewers disagree on one instance prompt: adjudication
    assert store.final_states()[first.clip_id].queue_state == "disputed"
    trail = [r.after for r in store.audit(a.id) if r.action == "disputed"]
    assert trail and trail[0]["why"] == "short_prompt:camera texts differ"
    second = record_by_index(run, 1)
    for user in (ann, bob):
        view = _claim_clip(store, user, second.clip_id)
        store.decide(user, view.id, "accept", view.version)
    stats = review_stats(store)
    assert stats["edit_rate_per_component"]["short_prompt"] == 0.5
    assert stats["edit_rate_per_component"]["camera"] == 0.0
    # per instance key: over kept reviews of items that have the instance
    assert stats["edit_rate_per_instance"] == {
        "camera": 1.0,
        "depth": 0.0,
        "identities": 0.0,
        "pose": 0.0,
        "camera+depth": 0.0,
    }
    prompts = stats["agreement"]["components"]["short_prompt"]
    # clip 0: four instance prompts, one differs; clip 1: two identical
    assert prompts["pairs"] == 6 and prompts["identical"] == round(5 / 6, 4)


# ---- the app ----
@pytest.fixture
def store(tmp_path: Path) -> ReviewStore:
    s = open_store(str(make_instance_run(tmp_path / "run")))
    s.ingest()
    s.add_user("ann", "annotator", None)
    s.add_user("rev", "reviewer", None)
    return s


@pytest.fixture
def client(store: ReviewStore) -> Iterator[TestClient]:
    with TestClient(create_app(store), base_url="http://127.0.0.1") as c:
        yield c


def test_api_edits_an_instance_prompt_and_returns_the_diff(
    client: TestClient, store: ReviewStore
) -> None:
    ann = {"Authorization": f"Bearer {store.create_token('ann')}"}
    item = client.post("/api/claim", headers=ann).json()
    assert item["clip_id"] == record_by_index(Path(store.run.root), 0).clip_id  # type: ignore[union-attr]
    assert item["fields"]["short_prompt:camera+depth"] == PROMPTS["camera+depth"]
    assert [(i["key"], i["field"], i["composition"]) for i in item["instances"]] == [
        ("camera", "short_prompt:camera", False),
        ("depth", "short_prompt:depth", False),
        ("identities", "short_prompt:identities", False),
        ("camera+depth", "short_prompt:camera+depth", True),
    ]
    url = f"/api/items/{item['id']}/decision"
    for name in ("short_prompt:pose", "short_prompt", "short_prompt:a b", "prompt"):
        r = client.post(
            url, headers=ann, json={"decision": "edit", "version": 1, "edits": {name: "X."}}
        )
        assert r.status_code == 422, (name, r.text)
    r = client.post(url, headers=ann, json={"decision": "edit", "version": 1, "edits": {}})
    assert r.status_code == 422 and "use accept" in r.json()["detail"]  # nothing changed
    r = client.post(url, headers=ann, json={"decision": "accept", "version": 1})
    assert r.status_code == 200 and r.json()["decision"] == "accept"

    item = client.post("/api/claim", headers=ann).json()
    url = f"/api/items/{item['id']}/decision"
    assert [i["key"] for i in item["instances"]] == ["depth", "pose"]
    human = "A person stands still while a grey cube slides past."
    r = client.post(
        url,
        headers=ann,
        json={
            "decision": "edit",
            "version": item["version"],
            "edits": {"short_prompt:pose": human},
        },
    )
    assert r.status_code == 200 and r.json()["state"] == "edited"
    rev = {"Authorization": f"Bearer {store.create_token('rev')}"}
    done = client.get(f"/api/items/{item['id']}", headers=rev).json()
    assert done["final_edits"] == {"short_prompt:pose": human}
    diff = [(d["op"], d["text"]) for d in done["final_diffs"]["short_prompt:pose"]]
    assert ("del", "square") in diff and ("ins", "cube") in diff
    assert [t for op, t in diff if op != "del"] == human.split()
    lint = client.post(
        "/api/lint", headers=ann, json={"field": "short_prompt:camera+depth", "text": "x " * 120}
    ).json()
    assert any("longer than 100 words" in w for w in lint["warnings"])


def test_word_diff() -> None:
    assert word_diff("a b c", "a x c") == [("same", "a"), ("del", "b"), ("ins", "x"), ("same", "c")]


def _page_text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def test_review_page_shows_instances_flags_and_suitability(
    client: TestClient, store: ReviewStore
) -> None:
    store.set_password("rev", "password-123")
    login = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)  # type: ignore[union-attr]
    client.post("/login", data={"name": "rev", "password": "password-123", "csrf": csrf})
    page = client.get("/review/items/1")
    assert page.status_code == 200
    body = page.text
    # one field per instance, named short_prompt:<key>, with a badge per condition type
    for key in ("camera", "depth", "identities", "camera+depth"):
        assert f'name="field_short_prompt:{key}"' in body
        assert f'data-types="{key}"' in body
    assert body.count('class="composition"') == 1
    assert 'name="field_short_prompt"' not in body
    # the flagged components are highlighted and every flag is listed with its fact
    assert 'class="field flagged" data-field="camera"' in body
    assert 'class="field flagged" data-field="main_object"' in body
    assert "<mark>The camera is static</mark>" in body
    text = _page_text(body)
    for flag in FLAGS:
        assert flag.check in text and flag.fact in text
    assert "Cross-checks: 2 flags" in text
    # suitability per type, with the reason, rendered as text (no Python reprs)
    assert "not suitable" in text and "no person visible in 6 of 8 frames" in text
    assert "frames_with_people 0.25" in " ".join(text.split())
    for repr_hint in ("{'", "['", "Suitability(", "CaptionFlag(", "FlagView(", "None"):
        assert repr_hint not in text, repr_hint
    assert "<script>" not in body.split("</head>")[1].replace('<script src="/static', "")


def test_html_form_edits_an_instance_prompt(client: TestClient, store: ReviewStore) -> None:
    store.set_password("ann", "password-123")
    login = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)  # type: ignore[union-attr]
    client.post("/login", data={"name": "ann", "password": "password-123", "csrf": csrf})
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/review").text).group(1)  # type: ignore[union-attr]
    page = client.post("/review/next", data={"csrf": token})
    item_id = int(str(page.url).rsplit("/", 1)[1])
    fields = dict(re.findall(r'name="field_([^"]+)"[^>]*>([^<]*)</textarea>', page.text))
    data = {f"field_{k}": html.unescape(v) for k, v in fields.items()}
    data["field_short_prompt:depth"] = "A grey square floats far in front of a flat wall."
    r = client.post(
        f"/review/items/{item_id}/decision",
        data={**data, "csrf": token, "version": "1", "action": "accept"},
    )
    assert r.status_code == 200
    final = next(s for s in store.final_states().values() if s.state == "edited")
    assert final.edits == {
        "short_prompt:depth": "A grey square floats far in front of a flat wall."
    }
    # an unknown field sent by a stale form comes back as an error with the text kept
    page = client.post("/review/next", data={"csrf": token})
    item_id = int(str(page.url).rsplit("/", 1)[1])
    r = client.post(
        f"/review/items/{item_id}/decision",
        data={
            "field_short_prompt:camera": "Kept text.",
            "csrf": token,
            "version": "1",
            "action": "accept",
        },
    )
    assert r.status_code == 422 and "Kept text." in r.text
    assert CAPTION["camera"] in html.unescape(r.text)
