"""Per-field verdicts: the outcome rule (a pure function, table-tested), the same rule through
the store on SQLite and PostgreSQL (regenerate / reject by policy, revisions linked in the
audit trail, a field dropped after max_regenerations, whole-record rejects staying final),
the JSON API, and what export --corrections and eval make of a run reviewed per field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from any2capins.annotators.captions.crosscheck import cross_check
from any2capins.pipeline.rundir import RunDir
from any2capins.schemas import Record, StructuredCaption
from any2capins.workflows.cli import app
from any2capins.workflows.eval import evaluate_review
from any2capins.workflows.export.corrections import corrections_table
from any2capins.workflows.review import (
    FieldVerdict,
    Invalid,
    ReviewPolicy,
    ReviewStore,
    UserInfo,
    field_outcome,
    final_states,
    open_store,
    regeneration_hint,
    review_stats,
)
from any2capins.workflows.review.app import create_app
from any2capins.workflows.review.text import machine_texts
from any2capins.workflows.review.views import caption_source, panes_of
from tests.instance_fixtures import PROMPTS, make_instance_run, record_by_index
from tests.openai_server import FakeOpenAI
from tests.review_fixtures import CAPTION, SHORT_PROMPT, fresh_pg_database, make_run
from tests.test_review_api import _login

A, F, R = "accept", "fix", "reject"


def _v(kind: str, reason: str | None = None, text: str | None = None) -> FieldVerdict:
    return FieldVerdict(kind, text, reason if kind == R else None, None)  # type: ignore[arg-type]


# field verdicts (dense, camera) -> policy -> regenerations so far -> (state, dropped)
OUTCOMES: list[tuple[str, dict[str, FieldVerdict], dict[str, Any], dict[str, int], str, tuple[str, ...]]] = [
    ("all accepted", {"dense": _v(A), "camera": _v(A)}, {}, {}, "accepted", ()),
    ("one fixed", {"dense": _v(F, text="New."), "camera": _v(A)}, {}, {}, "edited", ()),
    ("a reject regenerates", {"dense": _v(A), "camera": _v(R, "hallucination")}, {}, {}, "regenerate", ()),
    ("reject + fix regenerates", {"dense": _v(F, text="x"), "camera": _v(R, "other")}, {}, {}, "regenerate", ()),
    ("bad_clip is final", {"dense": _v(A), "camera": _v(R, "bad_clip")}, {}, {}, "rejected", ()),
    ("unsafe is final", {"dense": _v(R, "hallucination"), "camera": _v(R, "unsafe")}, {}, {}, "rejected", ()),
    ("policy: reject", {"dense": _v(A), "camera": _v(R, "other")}, {"on_field_reject": "reject"}, {}, "rejected", ()),
    ("under the limit", {"camera": _v(R, "other")}, {"max_regenerations": 2}, {"camera": 1}, "regenerate", ()),
    ("limit reached: dropped", {"camera": _v(R, "other")}, {"max_regenerations": 2}, {"camera": 2}, "rejected", ("camera",)),
    ("other field's count", {"camera": _v(R, "other")}, {"max_regenerations": 1}, {"dense": 1}, "regenerate", ()),
    ("no regenerations allowed", {"camera": _v(R, "other")}, {"max_regenerations": 0}, {}, "rejected", ("camera",)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("verdicts", "policy", "done", "state", "dropped"),
    [o[1:] for o in OUTCOMES],
    ids=[o[0] for o in OUTCOMES],
)
def test_outcome_rules(
    verdicts: dict[str, FieldVerdict],
    policy: dict[str, Any],
    done: dict[str, int],
    state: str,
    dropped: tuple[str, ...],
) -> None:
    outcome = field_outcome(verdicts, ReviewPolicy(**policy), done)
    assert outcome.state == state and outcome.dropped == dropped
    assert outcome.decision == {"accepted": "accept", "edited": "edit"}.get(state, "reject")
    assert outcome.edits == {n: v.text for n, v in verdicts.items() if v.verdict == F}
    rejected = {n for n, v in verdicts.items() if v.verdict == R}
    assert set(outcome.rejected) == rejected
    if rejected:  # the first deciding field's reason (screen order)
        final = [n for n in rejected if verdicts[n].reason in ("bad_clip", "unsafe")]
        first = (final or list(dropped) or [n for n in verdicts if n in rejected])[0]
        assert outcome.reason == verdicts[first].reason
    if dropped:
        assert outcome.note is not None and "max_regenerations" in outcome.note


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    with fresh_pg_database("verdicts") as url:
        yield url


def _open(tmp_path: Path, db_url: str | None, **policy: Any) -> tuple[ReviewStore, UserInfo]:
    run = make_run(tmp_path / "run", n=4, conditions=False)
    store = open_store(str(run), db_url, policy=ReviewPolicy(**policy))
    store.ingest()
    return store, store.add_user("ann", "annotator", None)


def _regenerated(record: Record, **texts: str) -> Record:
    assert record.caption is not None
    caption = StructuredCaption(**{**record.caption.model_dump(), **texts})
    return record.model_copy(update={"caption": caption})


def test_field_verdicts_regenerate_and_link_revisions(tmp_path: Path, db_url: str | None) -> None:
    store, ann = _open(tmp_path, db_url, max_regenerations=1)
    view = store.claim(ann)
    assert view is not None and view.revision == 1
    old_camera = view.machine["camera"]
    result = store.decide_fields(
        ann,
        view.id,
        view.version,
        {
            "dense": FieldVerdict("accept"),
            "style": FieldVerdict("fix", "Flat, saturated synthetic graphics."),
            "camera": FieldVerdict("reject", None, "hallucination", "no camera move here"),
        },
    )
    assert (result.state, result.decision, result.final) == ("regenerate", "reject", False)
    state = final_states(store)[view.clip_id]
    assert (state.state, state.queue_state) == ("pending", "regenerate")
    stats = review_stats(store)
    counts = stats["field_verdicts"]
    assert (counts["camera"]["reject"], counts["camera"]["reasons"]) == (1, {"hallucination": 1})
    assert (
        counts["style"]["fix"],
        counts["dense"]["accept"],
        counts["short_prompt"]["accept"],
    ) == (1, 1, 1)
    assert stats["queue"]["all"]["regenerate"] == 1 and stats["regeneration"]["waiting"] == 1

    (task,) = store.regeneration_queue()
    assert list(task.rejected) == ["camera"] and task.revision == 1
    camera = task.rejected["camera"]
    assert (camera.reason, camera.note, camera.machine_text) == (
        "hallucination",
        "no camera move here",
        old_camera,
    )
    # only the rejected field may change
    with pytest.raises(Invalid, match="changed fields nobody rejected: dense"):
        store.requeue_regenerated(task.item_id, task.version, _regenerated(task.record, dense="X."))
    new = _regenerated(task.record, camera="The camera holds still on a tripod, framing it all.")
    assert store.requeue_regenerated(task.item_id, task.version, new) == 2
    assert store.regeneration_queue() == []

    audit = store.audit(view.id)
    assert [a.action for a in audit][-2:] == ["regenerate", "regenerated"]
    link = audit[-1]
    assert link.after["from_revision"] == 1 and link.after["revision"] == 2
    assert (
        link.before["revision"] == 1 and link.after["fields"]["camera"]["reason"] == "hallucination"
    )

    # back in the queue as revision 2, for the same reviewer too, with the why and the fixes
    again = store.claim(ann)
    assert again is not None and again.id == view.id and again.revision == 2
    assert again.machine["camera"].startswith("The camera holds still")
    assert again.regenerated["camera"].rejected_text == old_camera
    assert again.carried_edits == {"style": "Flat, saturated synthetic graphics."}
    assert again.reviews_done == 0

    # rejected again after max_regenerations=1 regeneration: dropped for good
    result = store.decide_fields(
        ann,
        again.id,
        again.version,
        {"camera": FieldVerdict("reject", None, "other", "still wrong")},
    )
    assert (result.state, result.final) == ("rejected", True)
    final = final_states(store)[view.clip_id]
    assert final.state == "rejected" and final.revision == 2
    assert final.note is not None and "camera (1x)" in final.note
    assert [(g.field, g.revision) for g in final.regenerations] == [("camera", 1)]
    assert store.regeneration_queue() == []
    assert review_stats(store)["regeneration"]["fields_regenerated"] == {"camera": 1}


def test_final_rejects_are_never_regenerated(tmp_path: Path, db_url: str | None) -> None:
    store, ann = _open(tmp_path, db_url)
    first = store.claim(ann)
    assert first is not None
    # the whole-record API is unchanged: a reject is final, whatever its reason
    assert (
        store.decide(ann, first.id, "reject", first.version, reason="bad_clip").state == "rejected"
    )
    second = store.claim(ann)
    assert second is not None
    unsafe = {"dense": FieldVerdict("reject", None, "unsafe", None)}
    assert store.decide_fields(ann, second.id, second.version, unsafe).state == "rejected"
    third = store.claim(ann)
    assert third is not None
    with pytest.raises(Invalid, match="needs a reason code"):
        store.decide_fields(ann, third.id, third.version, {"dense": FieldVerdict("reject")})
    with pytest.raises(Invalid, match="no field 'short_prompt:camera'"):
        store.decide_fields(
            ann, third.id, third.version, {"short_prompt:camera": FieldVerdict("accept")}
        )
    same = {"dense": FieldVerdict("fix", third.machine["dense"] + "  ")}
    assert store.decide_fields(ann, third.id, third.version, same).state == "accepted"
    assert store.regeneration_queue() == []


def test_build_hint_names_the_regenerate_command(tmp_path: Path) -> None:
    store, ann = _open(tmp_path, None)
    assert store.run is not None
    run = store.run.root
    assert regeneration_hint(run) is None
    view = store.claim(ann)
    assert view is not None
    store.decide_fields(
        ann, view.id, view.version, {"dense": FieldVerdict("reject", None, "other")}
    )
    hint = regeneration_hint(run)
    assert hint is not None and f"any2cap captions regenerate --run {run}" in hint
    assert regeneration_hint(str(tmp_path / "no-such-run")) is None


def test_policy_on_field_reject_reject(tmp_path: Path) -> None:
    store, ann = _open(tmp_path, None, on_field_reject="reject")
    view = store.claim(ann)
    assert view is not None
    verdicts = {"action": FieldVerdict("reject", None, "wrong_subject", "not a square")}
    result = store.decide_fields(ann, view.id, view.version, verdicts)
    assert result.state == "rejected"
    state = final_states(store)[view.clip_id]
    assert (state.reason, state.note) == ("wrong_subject", "action: not a square")


def test_verdicts_over_the_api(tmp_path: Path) -> None:
    store, _ = _open(tmp_path, None)
    token = store.create_token("ann")
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(store), base_url="http://127.0.0.1") as client:
        item = client.post("/api/claim", headers=headers).json()
        assert item["revision"] == 1 and item["regenerated"] == {}
        url = f"/api/items/{item['id']}/decision"
        both = {"decision": "accept", "version": item["version"], "verdicts": {}}
        assert client.post(url, json=both, headers=headers).status_code == 422
        bad = {"version": item["version"], "verdicts": {"dense": {"verdict": "maybe"}}}
        assert client.post(url, json=bad, headers=headers).status_code == 422
        body = {
            "version": item["version"],
            "verdicts": {
                "main_object": {"verdict": "fix", "text": "A flat grey square."},
                "short_prompt": {"verdict": "reject", "reason": "other", "note": "too vague"},
            },
        }
        answer = client.post(url, json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "regenerate"
        seen = client.get(f"/api/items/{item['id']}", headers=headers).json()
        verdicts = seen["prior_reviews"][0]["verdicts"]
        assert verdicts["short_prompt"]["reason"] == "other"
        assert verdicts["main_object"] == {
            "verdict": "fix",
            "machine_text": CAPTION["main_object"],
            "text": "A flat grey square.",
            "reason": None,
            "note": None,
        }
        # the dashboard counts verdicts per field
        store.add_user("rev", "reviewer", None)
        _login(client, store, "rev")
        page = client.get("/dashboard")
        assert page.status_code == 200
        row = re.search(r'<tr data-field="short_prompt">(.*?)</tr>', page.text, re.S)
        assert row is not None
        cells = re.findall(r"<td>(.*?)</td>", row.group(1), re.S)
        assert cells[:4] == ["0", "0", "1", "100.0%"] and "other 1" in cells[4]


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReviewStore, dict[str, Any]]:
    """A run reviewed per field only (no hand-written edits dicts): one item fixed, one with a
    field rejected, regenerated and then accepted with a fix, one rejected whole."""
    run = make_run(tmp_path_factory.mktemp("verdict-export") / "run", n=3, conditions=False)
    store = open_store(str(run))
    store.ingest()
    ann = store.add_user("ann", "annotator", None)
    done: dict[str, Any] = {}
    fixed = store.claim(ann)
    assert fixed is not None
    dense = "A grey square slides right over a red-to-blue gradient; a white block stays put."
    store.decide_fields(ann, fixed.id, fixed.version, {"dense": FieldVerdict("fix", dense)})
    done["fixed"] = (fixed, dense)
    regen = store.claim(ann)
    assert regen is not None
    store.decide_fields(
        ann,
        regen.id,
        regen.version,
        {"camera": FieldVerdict("reject", None, "hallucination", "static")},
    )
    (task,) = store.regeneration_queue()
    new_camera = "The camera is locked off and frames the whole scene from the front."
    store.requeue_regenerated(
        task.item_id, task.version, _regenerated(task.record, camera=new_camera)
    )
    again = store.claim(ann)
    assert again is not None and again.id == regen.id
    style = "Flat synthetic graphics with saturated colours."
    store.decide_fields(
        ann,
        again.id,
        again.version,
        {"camera": FieldVerdict("accept"), "style": FieldVerdict("fix", style)},
    )
    done["regen"] = (regen, new_camera, style)
    whole = store.claim(ann)
    assert whole is not None
    store.decide(ann, whole.id, "reject", whole.version, reason="bad_clip", note="black frames")
    done["whole"] = whole
    return store, done


def test_corrections_rows_match_the_verdicts(reviewed: tuple[ReviewStore, dict[str, Any]]) -> None:
    store, done = reviewed
    table, _ = corrections_table(store)
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        rows.setdefault(row["clip_id"], []).append(row)
    fixed, dense = done["fixed"]
    (row,) = rows[fixed.clip_id]
    assert (row["field"], row["decision"], row["verdict"], row["revision"]) == (
        "dense",
        "edit",
        "fix",
        1,
    )
    assert (row["machine_text"], row["human_text"]) == (fixed.machine["dense"], dense)

    regen, new_camera, style = done["regen"]
    got = {(r["field"], r["revision"]): r for r in rows[regen.clip_id]}
    assert set(got) == {("camera", 1), ("style", 2)}
    pair = got[("camera", 1)]
    assert (pair["decision"], pair["verdict"], pair["reason"], pair["note"]) == (
        "reject",
        "reject",
        "hallucination",
        "static",
    )
    # the preference pair: rejected text, its replacement, the text finally accepted
    assert pair["machine_text"] == regen.machine["camera"] and pair["human_text"] is None
    assert pair["replacement_text"] == new_camera and pair["chosen_text"] == new_camera
    edit = got[("style", 2)]
    assert (edit["decision"], edit["verdict"], edit["human_text"]) == ("edit", "fix", style)

    whole = done["whole"]
    assert {r["field"] for r in rows[whole.clip_id]} == set(whole.machine)
    assert all(
        (r["decision"], r["verdict"], r["reason"]) == ("reject", None, "bad_clip")
        for r in rows[whole.clip_id]
    )


def test_eval_counts_field_fixes_as_human_text(
    reviewed: tuple[ReviewStore, dict[str, Any]],
) -> None:
    store, done = reviewed
    assert store.run is not None
    result = evaluate_review(store.run.root)
    review = result["review"]
    assert review["states"] == {"edited": 2, "rejected": 1}
    assert review["compared"] == 2
    assert review["edited_fields"] == {"dense": 1, "style": 1}
    assert review["regenerated_fields"] == {"camera": 1}
    assert review["field_verdicts"]["dense"] == {"accept": 1, "fix": 1}
    assert review["field_verdicts"]["camera"] == {"accept": 2}
    metrics = result["metrics"]
    # one changed pair each where a fix was given; the camera (regenerated, accepted) matches
    assert (metrics["dense"]["pairs"], metrics["dense"]["changed"]) == (2, 1)
    assert (metrics["style"]["pairs"], metrics["style"]["changed"]) == (2, 1)
    assert (metrics["camera"]["changed"], metrics["camera"]["bleu2"]) == (0, 1.0)
    assert metrics["dense"]["bleu2"] < 1.0
    fixed, _ = done["fixed"]
    assert machine_texts(fixed.record)["short_prompt"] == SHORT_PROMPT


def test_rejected_instance_prompt_is_regenerated_by_the_instances_writer(tmp_path: Path) -> None:
    run = make_instance_run(tmp_path / "run", n=3)
    with FakeOpenAI() as server:
        rundir = RunDir(str(run))
        info = rundir.load_info()
        assert info is not None
        params = {"writer": "openai", "model": "test-model", "base_url": server.base_url}
        info.recipe["stages"] = [
            {"annotator": "captions", "params": {**params, "cache_dir": str(tmp_path / "c")}},
            {"annotator": "instances", "params": {**params, "cache_dir": str(tmp_path / "c")}},
        ]
        rundir.save_info(info)
        store = open_store(str(run))
        store.ingest()
        ann = store.add_user("ann", "annotator", None)
        target = record_by_index(run, 2).clip_id  # identities + camera: instance "camera"
        while (view := store.claim(ann)) is not None and view.clip_id != target:
            store.decide(ann, view.id, "accept", view.version)
        assert view is not None
        rejected = {"short_prompt:camera": FieldVerdict("reject", None, "other", "say trucks")}
        assert store.decide_fields(ann, view.id, view.version, rejected).state == "regenerate"
        result = CliRunner().invoke(app, ["captions", "regenerate", "--run", str(run), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["requeued"][0]["fields"] == ["short_prompt:camera"]
        (body,) = server.bodies
        assert server.component_of(body) == "short_prompt"
        sent = json.dumps(body)
        assert "say trucks" in sent and PROMPTS["camera"] in sent
    after = machine_texts(record_by_index(run, 2))
    before = machine_texts(view.record)
    assert after["short_prompt:camera"] != before["short_prompt:camera"]
    assert {k: v for k, v in after.items() if k != "short_prompt:camera"} == {
        k: v for k, v in before.items() if k != "short_prompt:camera"
    }
    assert final_states(store)[target].revision == 2


def test_migration_0003_keeps_earlier_reviews(tmp_path: Path, db_url: str | None) -> None:
    """A store with reviews, taken down to 0002 and up again: the reviews are revision 1, the
    items revision 1 with no regenerations, and per-field verdicts work on it."""
    from alembic import command
    from alembic.config import Config

    from any2capins.workflows.review._db import MIGRATIONS

    store, ann = _open(tmp_path, db_url)
    first = store.claim(ann)
    assert first is not None
    store.decide(ann, first.id, "edit", first.version, edits={"camera": "A still camera."})
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    store.close()
    store = open_store(str(tmp_path / "run"), db_url)  # upgrades to the head again
    state = final_states(store)[first.clip_id]
    assert (state.state, state.edits, state.revision, state.regenerations) == (
        "edited",
        {"camera": "A still camera."},
        1,
        [],
    )
    assert [r.revision for r in state.reviews] == [1]
    second = store.claim(ann)
    assert second is not None and second.revision == 1
    verdicts = {"dense": FieldVerdict("reject", None, "other", None)}
    assert store.decide_fields(ann, second.id, second.version, verdicts).state == "regenerate"


def test_regenerated_caption_is_cross_checked_again(tmp_path: Path) -> None:
    """Clip 0's camera component says the camera is static while it trucks right (a
    camera_motion flag); rejected and rewritten as a moving shot, the flag is gone."""
    run = make_instance_run(tmp_path / "run", n=1)
    with FakeOpenAI() as server:
        rundir = RunDir(str(run))
        info = rundir.load_info()
        assert info is not None
        params = {"writer": "openai", "model": "test-model", "base_url": server.base_url}
        info.recipe["stages"] = [
            {"annotator": "captions", "params": {**params, "cache_dir": str(tmp_path / "c")}},
        ]
        rundir.save_info(info)
        before = record_by_index(run, 0)
        assert ("camera_motion", "camera") in {(f.check, f.component) for f in before.checks}
        store = open_store(str(run))
        store.ingest()
        ann = store.add_user("ann", "annotator", None)
        view = store.claim(ann)
        assert view is not None and view.clip_id == before.clip_id
        rejected = {"camera": FieldVerdict("reject", None, "contradicts_conditions", None)}
        assert store.decide_fields(ann, view.id, view.version, rejected).state == "regenerate"
        result = CliRunner().invoke(app, ["captions", "regenerate", "--run", str(run)])
        assert result.exit_code == 0, result.output
    after = record_by_index(run, 0)
    assert after.caption is not None and "sweep to the right" in after.caption.camera
    assert not [f for f in after.checks if f.component == "camera"]
    # the flags are the checker's on the whole new caption (the fixture's hand-made
    # main_object flag is not one it raises)
    assert after.checks == cross_check(after.caption.model_dump(), after)
    # the page's "Caption by" line names the caption stage, then the rewrite
    source = caption_source(after)
    assert source is not None and source.startswith(caption_source(before) or "?")
    assert source.endswith("regenerate (camera)")


def test_condition_panes_show_yes_and_no_not_python_booleans(tmp_path: Path) -> None:
    run = make_instance_run(tmp_path / "run", n=1)
    record = record_by_index(run, 0)
    assert record.conditions.camera is not None
    record = record.model_copy(
        update={
            "conditions": record.conditions.model_copy(
                update={"camera": record.conditions.camera.model_copy(update={"usable": False})}
            )
        }
    )
    facts = {(pane.name, key): value for pane in panes_of(record, []) for key, value in pane.facts}
    assert facts[("camera", "usable")] == "no"
    assert not [v for v in facts.values() if v in ("True", "False")]
