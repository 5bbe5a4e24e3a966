"""A local OpenAI-compatible HTTP server for the caption tests and benchmark.

It speaks real HTTP on 127.0.0.1 (chat completions, files, batches), answers every chat
request with schema-valid content for the component the request asks for, simulates
provider-side prompt caching (longest shared prefix, in 128-token steps from 1024 tokens,
like OpenAI's), and injects faults per request: 429 with Retry-After, 500, a hang past
the client's timeout, a malformed body, malformed JSON content, a missing component, a
too-short answer, a refusal, a markdown list, a short prompt that breaks a condition rule,
and a refusal of ``response_format: json_schema``.

It also builds what the caption tests feed the ``captions`` stage: synthetic records with
real JPEG keyframes and PNG condition visuals on disk, and two small condition types
(camera, identities) with grounding facts, short-prompt rules and a mechanical check.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
from pydantic import BaseModel

from any2capins.annotators import ClipInput
from any2capins.annotators.conditions import ConditionType
from any2capins.schemas import (
    CameraCondition,
    ClipRef,
    ClipStats,
    ColorSwatch,
    IdentitiesCondition,
    Identity,
    Keyframes,
    PayloadRef,
    Provenance,
    Record,
    make_clip_id,
)

FAULT_KINDS = (
    "429",
    "500",
    "hang",
    "malformed_body",
    "malformed_json",
    "missing",
    "short",
    "refusal",
    "refusal_text",
    "list",
    "violation",
)

# The instruction templates end with this answer format; the repair prompt repeats it.
_KEY_RE = re.compile(r'\{"(\w+)": "<text>"\}')
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
LOW_DETAIL_TOKENS = 85  # what OpenAI bills for a low-detail image


def image_tokens(url: str, detail: str) -> int:
    """OpenAI's documented image cost: 85 at low detail; otherwise fit in 2048x2048, scale
    the shortest side down to 768, then 170 per 512 px tile plus 85."""
    if detail == "low" or not url.startswith("data:"):
        return LOW_DETAIL_TOKENS
    data = base64.b64decode(url.split(",", 1)[1])
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return LOW_DETAIL_TOKENS
    h, w = img.shape[:2]
    scale = min(1.0, 2048 / max(h, w))
    h, w = h * scale, w * scale
    scale = min(1.0, 768 / min(h, w))
    h, w = h * scale, w * scale
    return int(85 + 170 * math.ceil(h / 512) * math.ceil(w / 512))


# Plain, neutral sentences: no camera, layout or list vocabulary, so every normal answer
# passes the structural checks and the test condition types' omission rules.
_SENTENCES = (
    "A young woman in a red coat walks slowly along a quiet street lined with small shops.",
    "Warm afternoon light falls across the brick walls and the wet stones of the pavement.",
    "She carries a paper bag in one hand and glances at the shop windows as she passes.",
    "A man in a grey jacket waits near a bicycle and turns his head toward her.",
    "The colours are soft and natural, with muted reds, browns and pale greys.",
    "A small dog trots beside the man and sniffs at the edge of a wooden bench.",
    "Leaves drift down from a tree whose branches reach over the street.",
    "The mood is calm and unhurried, like an ordinary weekday afternoon in a small town.",
    "Behind them a cafe has tables outside, most of them empty, with folded umbrellas.",
    "The woman stops, smiles at the dog and then continues on her way.",
)
# Short prompts that name no appearance, colour, layout, posture or camera: they pass every
# built-in condition type's omission rules (FakeOpenAI(plain_prompts=True)).
_PLAIN_PROMPT_SENTENCES = (
    "Someone spends a quiet moment at home and goes about an ordinary task.",
    "The scene feels calm and unhurried, like a weekday afternoon.",
    "Light from a window fills the room while the moment unfolds.",
    "Everyday life carries on without any sudden event or surprise.",
    "The mood stays relaxed and friendly from start to finish.",
)
WORDS_PER_COMPONENT = {
    "dense": 90,
    "main_object": 45,
    "background": 35,
    "camera": 16,
    "style": 25,
    "action": 40,
    "short_prompt": 50,
}
_CAMERA_COMPONENT = (
    "A steady eye-level medium shot with a slow lateral sweep to the right and a slight "
    "dolly in toward the two people as they meet."
)


def answer_text(key: str, seed: str, words: int | None = None, plain: bool = False) -> str:
    """Deterministic prose of about ``words`` words for the component ``key``."""
    if key == "camera" and words is None:
        return _CAMERA_COMPONENT
    target = words if words is not None else WORDS_PER_COMPONENT.get(key, 40)
    sentences = _PLAIN_PROMPT_SENTENCES if plain and key == "short_prompt" else _SENTENCES
    start = int(hashlib.sha256(seed.encode()).hexdigest(), 16) % len(sentences)
    out: list[str] = []
    i = start
    while sum(len(s.split()) for s in out) < target:
        out.append(sentences[i % len(sentences)])
        i += 1
    return " ".join(out)


@dataclass
class Fault:
    kind: str
    component: str | None = None  # dense ... action, short_prompt; None: any
    match: str | None = None  # substring of the request body; None: any
    unless: str | None = None  # a request body holding this substring is spared
    times: int = 1
    retry_after: str | None = "0.2"  # header value for 429
    hang_s: float = 3.0
    text: str = "The camera pans left and then tilts up over the street."  # for "violation"
    used: int = 0


@dataclass
class Stats:
    chat_requests: int = 0
    chat_ok: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    request_times: list[float] = field(default_factory=list)
    faults_fired: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    files_uploaded: int = 0
    batches_created: int = 0
    batch_lines: int = 0
    by_component: dict[str, int] = field(default_factory=dict)


def _units(body: dict[str, Any]) -> list[str]:
    """The request as a token-like sequence: words and punctuation, one unit per image token."""
    units: list[str] = []
    for msg in body.get("messages", []):
        units.append(f"<{msg.get('role')}>")
        content = msg.get("content")
        parts: list[dict[str, Any]] = (
            [{"type": "text", "text": content}] if isinstance(content, str) else (content or [])
        )
        for part in parts:
            if part.get("type") == "text":
                units.extend(_TOKEN_RE.findall(part.get("text", "")))
            elif part.get("type") == "image_url":
                image: dict[str, str] = part["image_url"]
                url = image["url"]
                digest = hashlib.sha256(url.encode()).hexdigest()[:16]
                n = image_tokens(url, image.get("detail", "auto"))
                units.extend(f"<img:{digest}:{k}>" for k in range(n))
    return units


class FakeOpenAI:
    """Start with ``with FakeOpenAI() as server:``; ``server.base_url`` ends in ``/v1``."""

    def __init__(
        self,
        latency_s: float = 0.0,
        batch_delay_s: float = 0.3,
        supports_json_schema: bool = True,
        prompt_cache: bool = True,
        plain_prompts: bool = False,
    ) -> None:
        self.latency_s = latency_s
        self.batch_delay_s = batch_delay_s
        self.supports_json_schema = supports_json_schema
        self.prompt_cache = prompt_cache
        self.plain_prompts = plain_prompts
        self.faults: list[Fault] = []
        self.stats = Stats()
        # every chat request's body, in arrival order (tests read what the client sent)
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_create_hang_s = 0.0
        self._prefixes: set[str] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def __enter__(self) -> FakeOpenAI:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # configuration
    def add_fault(self, kind: str, **kwargs: Any) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}")
        fault = Fault(kind=kind, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def reset_stats(self) -> None:
        with self.lock:
            self.stats = Stats()

    def _take_fault(self, key: str, raw: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.used >= f.times:
                    continue
                if f.component is not None and f.component != key:
                    continue
                if f.match is not None and f.match not in raw:
                    continue
                if f.unless is not None and f.unless in raw:
                    continue
                f.used += 1
                self.stats.faults_fired[f.kind] = self.stats.faults_fired.get(f.kind, 0) + 1
                return f
        return None

    # chat completions
    def _cached_tokens(self, units: list[str]) -> int:
        """Longest prefix shared with an earlier request, in 128-token steps from 1024."""
        h = hashlib.sha256()
        cached = 0
        snapshots: list[str] = []
        for i, unit in enumerate(units, 1):
            h.update(unit.encode() + b"\x00")
            if i % 128 == 0:
                snap = h.hexdigest()
                snapshots.append(snap)
                if snap in self._prefixes and i >= 1024:
                    cached = i
        self._prefixes.update(snapshots)
        return cached if self.prompt_cache else 0

    def _usage(self, body: dict[str, Any], content: str) -> dict[str, Any]:
        units = _units(body)
        with self.lock:
            cached = self._cached_tokens(units)
        completion = len(_TOKEN_RE.findall(content))
        return {
            "prompt_tokens": len(units),
            "completion_tokens": completion,
            "total_tokens": len(units) + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    def chat_answer(
        self, body: dict[str, Any], fault: Fault | None
    ) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
        """(status, JSON body or raw text, headers) for one chat request."""
        key = self.component_of(body)
        seed = json.dumps(body, sort_keys=True)[-400:]
        content: str | None = json.dumps({key: answer_text(key, seed, plain=self.plain_prompts)})
        refusal: str | None = None
        finish = "stop"
        kind = fault.kind if fault else None
        if kind == "429":
            headers = {"retry-after": fault.retry_after} if fault and fault.retry_after else {}
            return 429, _error("Rate limit reached", "rate_limit_exceeded"), headers
        if kind == "500":
            return 500, _error("The server had an error", "server_error"), {}
        if kind == "malformed_body":
            return 200, '{"id": "chatcmpl-x", "choices": [ {"message": ', {}
        if kind == "malformed_json":
            content = '{"' + key + '": "An unfinished answer that never closes'
        elif kind == "missing":
            content = json.dumps({"caption": ""})
        elif kind == "short":
            content = json.dumps({key: "Too short."})
        elif kind == "refusal":
            content, refusal = None, "I'm sorry, but I can't help with that request."
        elif kind == "refusal_text":
            content = json.dumps({key: "I'm sorry, but I can't help with describing this video."})
        elif kind == "list":
            items = "\n".join(f"- {s}" for s in _SENTENCES[:6])
            content = json.dumps({key: items})
        elif kind == "violation":
            assert fault is not None
            content = json.dumps(
                {key: answer_text(key, seed, plain=self.plain_prompts) + " " + fault.text}
            )
        completion = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "test-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                    "finish_reason": finish,
                }
            ],
            "usage": self._usage(body, content or refusal or ""),
        }
        return 200, completion, {}

    @staticmethod
    def component_of(body: dict[str, Any]) -> str:
        rf = body.get("response_format") or {}
        if rf.get("type") == "json_schema":
            return str(rf["json_schema"]["name"])
        for msg in reversed(body.get("messages", [])):
            content = msg.get("content")
            texts = (
                [content]
                if isinstance(content, str)
                else [p.get("text", "") for p in content or [] if p.get("type") == "text"]
            )
            for text in texts:
                m = _KEY_RE.search(text)
                if m:
                    return m.group(1)
        return "dense"

    # batches
    def _finish_batch(self, batch: dict[str, Any]) -> None:
        lines = self.files[batch["input_file_id"]]["content"].decode().splitlines()
        out: list[str] = []
        errors: list[str] = []
        for line in lines:
            if not line.strip():
                continue
            item = json.loads(line)
            body = item["body"]
            fault = self._take_fault(self.component_of(body), json.dumps(body))
            status, payload, _ = self.chat_answer(body, fault)
            row = {
                "id": f"batch_req_{uuid.uuid4().hex[:10]}",
                "custom_id": item["custom_id"],
                "response": {
                    "status_code": status,
                    "request_id": uuid.uuid4().hex,
                    "body": payload,
                },
                "error": None,
            }
            (out if status == 200 else errors).append(json.dumps(row))
            with self.lock:
                self.stats.batch_lines += 1
        batch["output_file_id"] = self._store_file(
            "batch_output.jsonl", "batch_output", "\n".join(out).encode()
        )
        if errors:
            batch["error_file_id"] = self._store_file(
                "batch_errors.jsonl", "batch_output", "\n".join(errors).encode()
            )
        batch["request_counts"] = {
            "total": len(out) + len(errors),
            "completed": len(out),
            "failed": len(errors),
        }
        batch["status"] = "completed"
        batch["completed_at"] = int(time.time())

    def _store_file(self, name: str, purpose: str, content: bytes) -> str:
        file_id = f"file-{uuid.uuid4().hex[:16]}"
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose,
            "content": content,
        }
        return file_id

    def batch_view(self, batch: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            ready = time.time() - batch["_t"] >= self.batch_delay_s
        if batch["status"] == "in_progress" and ready:
            self._finish_batch(batch)
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    @staticmethod
    def file_view(f: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in f.items() if k != "content"}


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "code": code, "param": None}}


class _Handler(BaseHTTPRequestHandler):
    owner: FakeOpenAI
    protocol_version = "HTTP/1.1"
    # headers and body go out as two writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every answer
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(
        self,
        status: int,
        payload: dict[str, Any] | str | bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        if isinstance(payload, dict):
            data = json.dumps(payload).encode()
        elif isinstance(payload, str):
            data = payload.encode()
        else:
            data = payload
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        raw = self._body()
        if path == "/v1/chat/completions":
            self._chat(raw)
        elif path == "/v1/files":
            self._upload(raw)
        elif path == "/v1/batches":
            self._create_batch(raw)
        elif path.startswith("/v1/batches/") and path.endswith("/cancel"):
            batch = self.owner.batches.get(path.split("/")[3])
            if batch is None:
                self._send(404, _error("no such batch", "not_found"))
                return
            batch["status"] = "cancelled"
            self._send(200, self.owner.batch_view(batch))
        else:
            self._send(404, _error(f"no route {path}", "not_found"))

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        owner = self.owner
        if path == "/v1/files":
            data = [owner.file_view(f) for f in owner.files.values()]
            self._send(200, {"object": "list", "data": data, "has_more": False})
        elif path.startswith("/v1/files/") and path.endswith("/content"):
            f = owner.files.get(path.split("/")[3])
            if f is None:
                self._send(404, _error("no such file", "not_found"))
            else:
                self._send(200, f["content"])
        elif path.startswith("/v1/files/"):
            f = owner.files.get(path.split("/")[3])
            self._send(*((200, owner.file_view(f)) if f else (404, _error("no file", "nf"))))
        elif path == "/v1/batches":
            data = [owner.batch_view(b) for b in reversed(list(owner.batches.values()))]
            self._send(200, {"object": "list", "data": data, "has_more": False})
        elif path.startswith("/v1/batches/"):
            batch = owner.batches.get(path.split("/")[3])
            if batch is None:
                self._send(404, _error("no such batch", "not_found"))
            else:
                self._send(200, owner.batch_view(batch))
        elif path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "test-model", "object": "model"}]})
        else:
            self._send(404, _error(f"no route {path}", "not_found"))

    def _chat(self, raw: bytes) -> None:
        owner = self.owner
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._send(400, _error("body is not JSON", "invalid_request_error"))
            return
        with owner.lock:
            owner.stats.chat_requests += 1
            owner.stats.in_flight += 1
            owner.stats.max_in_flight = max(owner.stats.max_in_flight, owner.stats.in_flight)
            owner.stats.request_times.append(time.monotonic())
        try:
            rf = body.get("response_format") or {}
            if rf.get("type") == "json_schema" and not owner.supports_json_schema:
                self._send(
                    400,
                    _error(
                        "response_format of type json_schema is not supported by this model",
                        "invalid_request_error",
                    ),
                )
                return
            key = owner.component_of(body)
            with owner.lock:
                owner.stats.by_component[key] = owner.stats.by_component.get(key, 0) + 1
                owner.bodies.append(body)
            fault = owner._take_fault(key, raw.decode())
            if owner.latency_s:
                time.sleep(owner.latency_s)
            if fault is not None and fault.kind == "hang":
                time.sleep(fault.hang_s)
            status, payload, headers = owner.chat_answer(body, fault)
            if status == 200 and isinstance(payload, dict):
                usage = payload["usage"]
                with owner.lock:
                    owner.stats.chat_ok += 1
                    owner.stats.prompt_tokens += usage["prompt_tokens"]
                    owner.stats.cached_tokens += usage["prompt_tokens_details"]["cached_tokens"]
                    owner.stats.completion_tokens += usage["completion_tokens"]
            self._send(status, payload, headers)
        finally:
            with owner.lock:
                owner.stats.in_flight -= 1

    def _upload(self, raw: bytes) -> None:
        ctype = self.headers.get("Content-Type", "")
        msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + raw
        )
        purpose, filename, content = "", "upload.jsonl", b""
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            raw_payload = part.get_payload(decode=True)
            payload = raw_payload if isinstance(raw_payload, bytes) else b""
            if name == "purpose":
                purpose = payload.decode()
            elif name == "file":
                filename = part.get_filename() or filename
                content = payload
        owner = self.owner
        with owner.lock:
            owner.stats.files_uploaded += 1
        file_id = owner._store_file(filename, purpose, content)
        self._send(200, owner.file_view(owner.files[file_id]))

    def _create_batch(self, raw: bytes) -> None:
        owner = self.owner
        req = json.loads(raw)
        if req.get("input_file_id") not in owner.files:
            self._send(400, _error("unknown input_file_id", "invalid_request_error"))
            return
        batch_id = f"batch_{uuid.uuid4().hex[:16]}"
        batch = {
            "id": batch_id,
            "object": "batch",
            "endpoint": req.get("endpoint"),
            "input_file_id": req["input_file_id"],
            "completion_window": req.get("completion_window", "24h"),
            "status": "in_progress",
            "created_at": int(time.time()),
            "metadata": req.get("metadata"),
            "output_file_id": None,
            "error_file_id": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "_t": time.time(),
        }
        with owner.lock:
            owner.batches[batch_id] = batch
            owner.stats.batches_created += 1
        if owner.batch_create_hang_s:
            time.sleep(owner.batch_create_hang_s)  # created, but the answer comes late
        self._send(200, owner.batch_view(batch))


def windows(times: list[float], window_s: float) -> Iterator[int]:
    """Number of requests in every window of ``window_s`` starting at a request."""
    ts = sorted(times)
    j = 0
    for i, t in enumerate(ts):
        while j < len(ts) and ts[j] < t + window_s:
            j += 1
        yield j - i


# synthetic records for the caption stage
_CAMERA_WORDS = re.compile(
    r"\b(camera|pans?|panning|tilts?|tilting|dolly|dollies|zooms?|zooming|trucks?|trucking)\b"
)


class CameraType(ConditionType[CameraCondition]):
    name: ClassVar[str] = "camera"
    summary_model: ClassVar[type[BaseModel]] = CameraCondition

    def grounding_facts(self, summary: BaseModel, record: Record) -> list[str]:
        assert isinstance(summary, CameraCondition)
        return [f"measured camera motion: {summary.description} ({', '.join(summary.labels)})"]

    def short_prompt_rules(self, summary: BaseModel, record: Record) -> list[str]:
        return ["Do not describe camera movement: the camera condition already gives it."]

    def short_prompt_violations(self, prompt: str, summary: BaseModel, record: Record) -> list[str]:
        found = sorted(set(_CAMERA_WORDS.findall(prompt.lower())))
        return [f"describes camera movement ({', '.join(found)})"] if found else []


class IdentitiesType(ConditionType[IdentitiesCondition]):
    name: ClassVar[str] = "identities"
    summary_model: ClassVar[type[BaseModel]] = IdentitiesCondition

    def grounding_facts(self, summary: BaseModel, record: Record) -> list[str]:
        assert isinstance(summary, IdentitiesCondition)
        labels = ", ".join(i.label for i in summary.identities)
        return [f"{len(summary.identities)} main subjects tracked: {labels}"]

    def short_prompt_rules(self, summary: BaseModel, record: Record) -> list[str]:
        return [
            "Do not re-describe what the reference images show; refer to the subjects "
            "implicitly, e.g. 'the person on the right'."
        ]


TEST_TYPES: dict[str, ConditionType[Any]] = {"camera": CameraType(), "identities": IdentitiesType()}


class NoArtifacts:
    def put(self, name: str, data: bytes, media_type: str) -> PayloadRef:
        raise AssertionError("the captions stage writes no payloads")


def _payload(path: Path, data: bytes, media_type: str) -> PayloadRef:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return PayloadRef(
        uri=str(path),
        media_type=media_type,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _image(seed: int, ext: str = ".jpg", size: tuple[int, int] = (96, 160)) -> bytes:
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w]
    img = np.stack([(xs * 3 + seed * 40) % 256, (ys * 5 + seed * 17) % 256, (xs + ys) % 256], -1)
    ok, buf = cv2.imencode(ext, img.astype(np.uint8))
    assert ok
    return bytes(buf.tobytes())


def make_record(
    folder: Path,
    i: int,
    run_id: str = "run-a",
    camera: bool = False,
    identities: bool = False,
) -> Record:
    """Clip ``i`` lasts ``2 + i`` seconds, so "Duration {2+i}.0 seconds" names it in a request."""
    duration = float(2 + i)
    uri = f"file:///clips/clip{i:02d}.mp4"
    clip = ClipRef(
        clip_id=make_clip_id(uri, 0.0, duration),
        source_uri=uri,
        start_s=0.0,
        end_s=duration,
        fps=25.0,
        width=320,
        height=180,
        num_frames=int(duration * 25),
    )
    base = folder / clip.clip_id
    frames = [_payload(base / f"k{j}.jpg", _image(i * 10 + j), "image/jpeg") for j in range(2)]
    record = Record(
        clip=clip,
        stats=ClipStats(
            frames_sampled=16,
            mean_brightness=round(0.3 + 0.02 * i, 3),
            palette=[
                ColorSwatch(hex="#7a4a2a", fraction=0.6),
                ColorSwatch(hex="#d0d0d0", fraction=0.4),
            ],
            motion_magnitude=0.01,
        ),
        keyframes=Keyframes(timestamps_s=[0.5, duration - 0.5], frames=frames),
        provenance=Provenance(recipe="test", recipe_hash="test", run_id=run_id),
    )
    if camera:
        record.conditions.camera = CameraCondition(
            source="estimated",
            frames=16,
            labels=["pan_left"],
            description="slow pan to the left",
            trajectory=_payload(base / "camera.txt", b"0 0 0", "text/plain"),
        )
    if identities:
        crop = _payload(base / "crop0.png", _image(i, ".png", (64, 32)), "image/png")
        record.conditions.identities = IdentitiesCondition(
            model_ids=["test-detector"],
            identities=[
                Identity(
                    identity_id=0,
                    label="person",
                    frames_present=16,
                    mean_area_fraction=0.2,
                    crop=crop,
                )
            ],
            stitched_reference=_payload(
                base / "stitched.png", _image(i, ".png", (64, 96)), "image/png"
            ),
        )
    return record


def make_inputs(folder: Path, n: int, **kwargs: Any) -> list[ClipInput]:
    out = []
    for i in range(n):
        record = make_record(folder, i, **kwargs)
        out.append(
            ClipInput(
                clip=record.clip,
                frames=np.zeros((1, 8, 8, 3), np.uint8),
                timestamps_s=[0.0],
                record=record,
                artifacts=NoArtifacts(),
            )
        )
    return out


def match_clip(i: int) -> str:
    """A substring that appears only in clip ``i``'s requests."""
    return f"Duration {2 + i:.1f} seconds"
