"""OpenAI Batch API mode: requests the caption stage queued (``mode: batch``) are submitted
as JSONL batches, polled, and their answers collected into the response cache, where the
next build finds them and pays nothing more.

Every step is persisted in the cache's ``submissions`` table before the next one starts,
and each step first looks for the effect of an interrupted earlier attempt (an uploaded
file with the submission's name, a batch carrying its id in ``metadata``), so a submit,
poll or collect killed at any moment resumes without creating a duplicate batch.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import openai

from any2capins.annotators.captions.cache import ResponseCache
from any2capins.annotators.captions.client import (
    check_shape,
    endpoint_label,
    estimate_tokens,
    resolve_api_key,
    usage_of,
)
from any2capins.annotators.captions.config import WriterConfig

BATCH_ENDPOINT: Final = "/v1/chat/completions"
METADATA_KEY = "any2capins_submission"
MAX_LINES = 50_000  # OpenAI's limits per batch: 50,000 requests and a 200 MB input file
MAX_BYTES = 180 * 2**20
_DONE = ("completed", "failed", "expired", "cancelled")
_LIST_LIMIT = 1000  # how far back to look for an interrupted attempt's file or batch


@dataclass
class CollectReport:
    collected: int = 0
    requeued: int = 0
    batches_done: list[str] = field(default_factory=list)
    batches_open: list[str] = field(default_factory=list)
    cost_usd: float = 0.0


def _file_name(submission: str) -> str:
    return f"any2capins-{submission}.jsonl"


class BatchRunner:
    def __init__(
        self,
        config: WriterConfig,
        cache: ResponseCache,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.config = config
        self.cache = cache
        self.log = log
        self.endpoint = endpoint_label(config.base_url)
        api_key = resolve_api_key(config)
        self.sdk = openai.OpenAI(
            api_key=api_key,
            base_url=config.base_url,
            timeout=config.limits.timeout_s,
            max_retries=config.limits.max_retries,
            default_query=dict(config.default_query) or None,
        )

    def close(self) -> None:
        self.sdk.close()

    # submit
    def submit(self, max_requests: int = MAX_LINES, max_bytes: int = MAX_BYTES) -> list[str]:
        """Finish interrupted submissions, then submit everything queued; returns batch ids."""
        batch_ids = [self._advance(s["id"]) for s in self._open() if not s["batch_id"]]
        while True:
            sid = uuid.uuid4().hex[:16]
            n = self.cache.claim_pending(sid, self.endpoint, max_requests, max_bytes)
            if n == 0:
                break
            self.log(f"submission {sid}: {n} requests")
            batch_ids.append(self._advance(sid))
        others = {e: n for e, n in self.cache.pending_endpoints().items() if e != self.endpoint}
        for endpoint, n in others.items():
            self.log(f"{n} queued requests belong to another endpoint ({endpoint}): not submitted")
        return batch_ids

    def _open(self) -> list[dict[str, Any]]:
        return [s for s in self.cache.submissions(open_only=True) if s["endpoint"] == self.endpoint]

    def _advance(self, sid: str) -> str:
        sub = next(s for s in self.cache.submissions() if s["id"] == sid)
        file_id = sub["input_file_id"]
        batch_id = None
        if file_id:
            # the file id is recorded before the batch is created: a batch may exist
            batch_id = self._find_batch(sid)
        else:
            file_id = self._find_file(sid) or self._upload(sid)
            self.cache.update_submission(sid, input_file_id=file_id, status="uploaded")
        if batch_id is None:
            batch = self.sdk.batches.create(
                input_file_id=file_id,
                endpoint=BATCH_ENDPOINT,
                completion_window="24h",
                metadata={METADATA_KEY: sid},
            )
            batch_id = batch.id
        self.cache.update_submission(sid, batch_id=batch_id, status="submitted")
        self.log(f"submission {sid}: batch {batch_id}")
        return str(batch_id)

    def _upload(self, sid: str) -> str:
        lines = (
            json.dumps(
                {"custom_id": key, "method": "POST", "url": BATCH_ENDPOINT, "body": body},
                separators=(",", ":"),
            )
            for key, body in self.cache.submission_lines(sid)
        )
        data = ("\n".join(lines) + "\n").encode()
        uploaded = self.sdk.files.create(
            file=(_file_name(sid), data, "application/jsonl"), purpose="batch"
        )
        return str(uploaded.id)

    def _find_file(self, sid: str) -> str | None:
        """The file an interrupted submit uploaded before it could record the id."""
        name = _file_name(sid)
        for i, f in enumerate(self.sdk.files.list(purpose="batch")):
            if f.filename == name:
                return str(f.id)
            if i >= _LIST_LIMIT:
                break
        return None

    def _find_batch(self, sid: str) -> str | None:
        """The batch an interrupted submit created before it could record the id."""
        for i, b in enumerate(self.sdk.batches.list(limit=100)):
            if (b.metadata or {}).get(METADATA_KEY) == sid:
                return str(b.id)
            if i >= _LIST_LIMIT:
                break
        return None

    # poll and collect
    def status(self) -> list[dict[str, Any]]:
        """Every submission, with the live status of those still open."""
        out = []
        for sub in self.cache.submissions():
            if sub["batch_id"] and sub["collected"] is None:
                batch = self.sdk.batches.retrieve(sub["batch_id"])
                counts = batch.request_counts
                sub = {
                    **sub,
                    "status": batch.status,
                    "completed": counts.completed if counts else None,
                    "failed": counts.failed if counts else None,
                }
                self.cache.update_submission(sub["id"], status=batch.status)
            out.append(sub)
        return out

    def collect(self) -> CollectReport:
        """Store the answers of every finished batch in the cache; requeue what failed."""
        report = CollectReport()
        for sub in self._open():
            if not sub["batch_id"]:
                continue
            batch = self.sdk.batches.retrieve(sub["batch_id"])
            if batch.status not in _DONE:
                self.cache.update_submission(sub["id"], status=batch.status)
                report.batches_open.append(batch.id)
                continue
            keys = {k for k, _ in self.cache.submission_lines(sub["id"])}
            seen: set[str] = set()
            if batch.output_file_id:
                for row in self._lines(batch.output_file_id):
                    seen.add(str(row.get("custom_id")))
                    report.cost_usd += self._store(row, report)
            if batch.error_file_id:
                for row in self._lines(batch.error_file_id):
                    key = str(row.get("custom_id"))
                    seen.add(key)
                    self.cache.requeue(
                        key, json.dumps(row.get("error") or row.get("response"))[:500]
                    )
                    report.requeued += 1
            missing = keys - seen
            for key in missing:
                self.cache.requeue(key, f"batch {batch.id} ({batch.status}) returned no answer")
            report.requeued += len(missing)
            self.cache.update_submission(
                sub["id"], status=batch.status, collected=time.time(), message=None
            )
            report.batches_done.append(batch.id)
            self.log(f"batch {batch.id}: {batch.status}, {len(seen)} answers read")
        return report

    def _lines(self, file_id: str) -> Iterable[dict[str, Any]]:
        text = self.sdk.files.content(file_id).text
        for line in text.splitlines():
            if line.strip():
                yield json.loads(line)

    def _store(self, row: dict[str, Any], report: CollectReport) -> float:
        key = str(row.get("custom_id"))
        pending = self.cache.pending_row(key)
        response = row.get("response") or {}
        if pending is None:
            return 0.0  # collected before (a re-run of collect after a kill)
        model, clip_id, run_id, body = pending
        try:
            if response.get("status_code") != 200:
                raise ValueError(f"HTTP {response.get('status_code')}")
            data = check_shape(response.get("body"))
        except ValueError as e:
            self.cache.requeue(key, f"batch answer unusable: {e}")
            report.requeued += 1
            return 0.0
        usage, _ = usage_of(
            data, estimate_tokens(body["messages"], self.config.images.tokens_per_image)
        )
        cost = self.config.prices.cost(
            usage.tokens_in, usage.tokens_cached, usage.tokens_out, batch=True
        )
        self.cache.put(key, model, data, usage, cost, "batch", run_id, clip_id)
        report.collected += 1
        return cost

    def run(
        self,
        wait: bool,
        poll_interval_s: float = 30.0,
        timeout_s: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> CollectReport:
        """Submit, then collect; with ``wait``, poll until every open batch is collected."""
        self.submit()
        started = time.monotonic()
        total = CollectReport()
        while True:
            report = self.collect()
            total.collected += report.collected
            total.requeued += report.requeued
            total.cost_usd += report.cost_usd
            total.batches_done += report.batches_done
            total.batches_open = report.batches_open
            if not wait or not report.batches_open:
                return total
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                return total
            sleep(poll_interval_s)
