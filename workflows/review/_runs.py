"""The run a store is bound to (where its records and artifacts live) and its review policy,
including re-sampling the untouched items when the policy changes."""

from __future__ import annotations

import hashlib
import os

from sqlalchemy import and_, exists, or_, select

from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.storage import Storage
from any2capins.workflows.review._base import HOLD_SAMPLING, StoreBase, snapshot
from any2capins.workflows.review._db import retrying
from any2capins.workflows.review._errors import Invalid, NotFound
from any2capins.workflows.review._types import (
    RunBinding,
)
from any2capins.workflows.review.models import (
    Claim,
    Item,
    Run,
)
from any2capins.workflows.review.policy import ReviewPolicy

SQLITE_NAME = "review.db"


class RunsMixin(StoreBase):
    """The run's row and its review policy."""

    @retrying
    def ensure_run(self, policy: ReviewPolicy | None = None) -> None:
        run = self._bound()
        with self._write() as s:
            row = s.get(Run, run.run_key)
            if row is None:
                chosen = policy or ReviewPolicy()
                s.add(
                    Run(
                        run_key=run.run_key,
                        root=run.root,
                        artifacts_root=run.artifacts_root,
                        policy_json=chosen.model_dump_json(),
                        created_at=self._now(),
                    )
                )
                s.flush()
                self._audit(
                    s, "system", "run_created", after={"root": run.root, **chosen.model_dump()}
                )
                return
            if row.root != run.root or row.artifacts_root != run.artifacts_root:
                self._audit(
                    s,
                    "system",
                    "run_moved",
                    before={"root": row.root, "artifacts_root": row.artifacts_root},
                    after={"root": run.root, "artifacts_root": run.artifacts_root},
                )
                row.root, row.artifacts_root = run.root, run.artifacts_root
        if policy is not None:
            self.set_policy(policy, actor="system")

    def policy(self) -> ReviewPolicy:
        with self._read() as s:
            return self._policy(s)

    @retrying
    def set_policy(self, policy: ReviewPolicy, actor: str) -> int:
        """Store a new policy and re-sample the items no human has touched yet.

        Returns how many items changed state (pending <-> held back) or review count.
        """
        run = self._bound()
        changed = 0
        with self._write() as s:
            row = s.get(Run, run.run_key, with_for_update=True)
            if row is None:
                raise NotFound(f"run {run.run_key} is not in the store")
            old = ReviewPolicy.model_validate_json(row.policy_json)
            if old == policy:
                return 0
            row.policy_json = policy.model_dump_json()
            self._audit(s, actor, "set_policy", before=old.model_dump(), after=policy.model_dump())
            touched = select(Claim.id).where(Claim.item_id == Item.id)
            untouched = s.scalars(
                select(Item)
                .where(
                    Item.run_key == run.run_key,
                    or_(
                        Item.state == "pending",
                        and_(Item.state == "held_back", Item.hold_reason == HOLD_SAMPLING),
                    ),
                    ~exists(touched),
                )
                .with_for_update()
            ).all()
            now = self._now()
            for item in untouched:
                types = [] if item.conditions == "none" else item.conditions.split("+")
                state = "pending" if policy.is_sampled(item.clip_id, types) else "held_back"
                required = policy.reviews_for(item.clip_id)
                if state == item.state and required == item.reviews_required:
                    continue
                before = snapshot(item)
                item.state, item.reviews_required = state, required
                item.hold_reason = HOLD_SAMPLING if state == "held_back" else None
                item.version += 1
                item.updated_at = now
                self._audit(s, actor, "resample", item, before, snapshot(item))
                changed += 1
        return changed


def run_binding(run_dir: str) -> RunBinding:
    rundir = RunDir(run_dir)
    info = rundir.load_info()
    if info is None and not rundir.storage.exists("records"):
        raise NotFound(f"{rundir.root} is not a run directory (no run.json, no records/)")
    # The first build's run id names the run wherever its folder is mounted or moved.
    if info is not None and info.runs and info.runs[0].get("run_id"):
        key = f"run:{info.runs[0]['run_id']}"
    else:
        key = "path:" + hashlib.sha256(rundir.root.encode()).hexdigest()[:32]
    artifacts = (info.recipe.get("artifacts") if info is not None else None) or (
        rundir.artifacts_uri()
    )
    return RunBinding(run_key=key, root=rundir.root, artifacts_root=Storage(artifacts).root)


def default_db_url(run_dir: str) -> str:
    rundir = RunDir(run_dir)
    if not rundir.storage.local:
        raise Invalid(
            f"{rundir.root} is not on a local disk: give the review store with --db URL "
            "(PostgreSQL, or a sqlite:/// path on a local disk)"
        )
    return f"sqlite:///{os.path.join(rundir.root, SQLITE_NAME)}"
