// The review screen's behaviour: keyboard shortcuts, synchronized video panes, live word
// counts / warnings / diffs, lease renewal and drafts kept in this browser so no text is lost.
// Served as a file (the Content-Security-Policy allows no inline script); all record text is
// put into the page with textContent, never as HTML.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";
  const help = document.getElementById("help");
  const hint = document.getElementById("hint");

  function say(text) {
    if (hint) hint.textContent = text;
  }

  function toggleHelp(show) {
    if (!help) return;
    help.hidden = show === undefined ? !help.hidden : !show;
  }
  const helpButton = document.getElementById("help-button");
  if (helpButton) helpButton.addEventListener("click", () => toggleHelp());
  if (help) help.addEventListener("click", (e) => { if (e.target === help) toggleHelp(false); });

  function isTyping(el) {
    if (!el) return false;
    const tag = el.tagName;
    return tag === "TEXTAREA" || tag === "SELECT" || (tag === "INPUT" && el.type !== "checkbox");
  }

  function click(id) {
    const el = document.getElementById(id);
    if (el && !el.disabled) { el.click(); return true; }
    return false;
  }

  function api(path, payload) {
    return fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: payload === undefined ? undefined : JSON.stringify(payload),
    });
  }

  // ---- pages without an item: N pulls the next one ----
  if (page !== "review") {
    document.addEventListener("keydown", (e) => {
      if (isTyping(document.activeElement) || e.ctrlKey || e.metaKey || e.altKey) return;
      if (e.key === "?") { toggleHelp(); e.preventDefault(); }
      else if (e.key === "Escape") toggleHelp(false);
      else if (e.key === "n" || e.key === "N") { if (click("btn-next")) e.preventDefault(); }
    });
    return;
  }

  const itemId = body.dataset.item;
  const version = body.dataset.version;
  const editable = body.dataset.editable === "1";
  const fps = parseFloat(body.dataset.fps) || 25;
  const start = parseFloat(body.dataset.start) || 0;
  const end = parseFloat(body.dataset.end) || 0;
  const span = Math.max(end - start, 1e-6);

  // ---- player and synchronized panes ----
  const main = document.getElementById("main-video");
  const synced = Array.from(document.querySelectorAll("video.sync"));
  const playButton = document.getElementById("btn-play");
  const clock = document.getElementById("clock");
  const speed = document.getElementById("speed");
  const overlay = document.getElementById("pose-overlay");
  const overlayToggle = document.getElementById("overlay-toggle");
  const keyframes = Array.from(document.querySelectorAll(".keyframe"));

  function fraction() {
    return main ? Math.min(Math.max((main.currentTime - start) / span, 0), 1) : 0;
  }

  function syncPanes(force) {
    const f = fraction();
    for (const v of synced) {
      if (!v.duration || !isFinite(v.duration)) continue;
      const target = f * v.duration;
      if (force || Math.abs(v.currentTime - target) > 0.12) v.currentTime = target;
      v.playbackRate = main.playbackRate * (v.duration / span);
      if (main.paused && !v.paused) v.pause();
      if (!main.paused && v.paused) v.play().catch(() => {});
    }
    if (clock) {
      const t = main.currentTime - start;
      clock.textContent = `${t.toFixed(2)} s · frame ${Math.round(t * fps)}`;
    }
    let best = null;
    for (const k of keyframes) {
      const d = Math.abs(parseFloat(k.dataset.t) - main.currentTime);
      if (best === null || d < best.d) best = { k, d };
      k.classList.remove("current");
    }
    if (best) best.k.classList.add("current");
  }

  function togglePlay() {
    if (!main) return;
    if (main.paused) main.play().catch(() => say("The browser could not play this video."));
    else main.pause();
  }

  function step(frames) {
    if (!main) return;
    main.pause();
    const t = main.currentTime + frames / fps;
    main.currentTime = Math.min(Math.max(t, start), Math.max(end - 1 / fps, start));
  }

  function changeSpeed(delta) {
    if (!speed) return;
    const i = Math.min(Math.max(speed.selectedIndex + delta, 0), speed.options.length - 1);
    speed.selectedIndex = i;
    speed.dispatchEvent(new Event("change"));
  }

  function toggleOverlay(on) {
    if (!overlay) return;
    const show = on === undefined ? overlay.hidden : on;
    overlay.hidden = !show;
    if (overlayToggle) overlayToggle.checked = show;
  }

  if (main) {
    main.addEventListener("loadedmetadata", () => { if (main.currentTime < start) main.currentTime = start; syncPanes(true); });
    main.addEventListener("timeupdate", () => {
      // Loop inside the clip's span: the source file may be longer than the clip.
      if (main.currentTime >= end - 0.5 / fps && !main.paused) main.currentTime = start;
      syncPanes(false);
    });
    main.addEventListener("seeked", () => syncPanes(true));
    main.addEventListener("play", () => { if (playButton) playButton.firstChild.textContent = "Pause "; syncPanes(true); });
    main.addEventListener("pause", () => { if (playButton) playButton.firstChild.textContent = "Play "; syncPanes(true); });
    main.addEventListener("ratechange", () => syncPanes(false));
    setInterval(() => { if (!main.paused) syncPanes(false); }, 200);
  }
  if (playButton) playButton.addEventListener("click", togglePlay);
  const back = document.getElementById("btn-back");
  const fwd = document.getElementById("btn-fwd");
  if (back) back.addEventListener("click", () => step(-1));
  if (fwd) fwd.addEventListener("click", () => step(1));
  if (speed) speed.addEventListener("change", () => { if (main) main.playbackRate = parseFloat(speed.value); });
  if (overlayToggle) overlayToggle.addEventListener("change", () => toggleOverlay(overlayToggle.checked));
  for (const k of keyframes) {
    k.addEventListener("click", () => { if (main) { main.pause(); main.currentTime = parseFloat(k.dataset.t); } });
  }

  // ---- fields: counts, diffs, warnings, drafts ----
  const fields = Array.from(document.querySelectorAll(".field"));
  const areas = fields.map((f) => f.querySelector("textarea"));
  const note = document.getElementById("note");
  const reason = document.getElementById("reason");
  const draftKey = `a2c-draft-${itemId}-${version}`;
  let lastField = null;

  function words(text) {
    const m = text.trim().match(/\S+/g);
    return m ? m : [];
  }

  // Word-level diff (longest common subsequence), rendered with textContent only.
  function diff(a, b) {
    const x = words(a), y = words(b);
    if (x.length * y.length > 4e6) return null;
    const n = x.length, m = y.length;
    const dp = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
    for (let i = n - 1; i >= 0; i--) {
      for (let j = m - 1; j >= 0; j--) {
        dp[i][j] = x[i] === y[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
      }
    }
    const out = [];
    let i = 0, j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && x[i] === y[j]) { out.push(["same", x[i]]); i++; j++; }
      else if (j < m && (i >= n || dp[i][j + 1] >= dp[i + 1][j])) { out.push(["ins", y[j]]); j++; }
      else { out.push(["del", x[i]]); i++; }
    }
    return out;
  }

  function renderDiff(field, machine, value) {
    const box = field.querySelector("[data-diff]");
    const flag = field.querySelector("[data-edited]");
    const changed = value.trim() !== machine.trim();
    field.classList.toggle("changed", changed);
    if (flag) flag.hidden = !changed;
    box.hidden = !changed;
    box.replaceChildren();
    if (!changed) return;
    const ops = diff(machine, value);
    if (ops === null) { box.textContent = "(too long for a live diff)"; return; }
    for (const [kind, word] of ops) {
      const el = document.createElement(kind === "same" ? "span" : kind);
      el.textContent = word;
      box.append(el, " ");
    }
  }

  const lintTimers = new Map();
  function lint(field, name, value) {
    clearTimeout(lintTimers.get(name));
    lintTimers.set(name, setTimeout(async () => {
      try {
        const r = await api("/api/lint", { field: name, text: value });
        if (!r.ok) return;
        const data = await r.json();
        const list = field.querySelector("[data-warnings]");
        list.replaceChildren(...data.warnings.map((w) => { const li = document.createElement("li"); li.textContent = w; return li; }));
      } catch (_) { /* offline: the server checks again on submit */ }
    }, 350));
  }

  // Grow each field to its text (CSSOM writes are allowed under the CSP; style attributes are not).
  function autosize(area) {
    area.style.height = "auto";
    area.style.height = `${Math.min(area.scrollHeight + 2, 420)}px`;
  }

  function refresh(field, area, withLint) {
    const value = area.value;
    autosize(area);
    const count = field.querySelector("[data-count]");
    count.textContent = `${words(value).length} words`;
    renderDiff(field, area.dataset.machine || "", value);
    if (withLint) lint(field, field.dataset.field, value);
  }

  // ---- per-field verdicts: accept / fix (edit the text) / reject (reason, note) ----
  const verdictInputs = fields.map((f) => f.querySelector("[data-verdict]"));
  const rejectBoxes = fields.map((f) => f.querySelector("[data-reject]"));
  const rejectReasons = fields.map((f) => f.querySelector("[data-reject-reason]"));
  const rejectNotes = fields.map((f) => f.querySelector("[data-reject-note]"));
  // "accept" | "reject" | null (none given: accepted, or fixed when its text changed)
  const explicit = verdictInputs.map((v) => (v && v.value === "reject" ? "reject" : null));
  let cursor = null;

  function verdictOf(i) {
    if (explicit[i] === "reject") return "reject";
    if (areas[i].value.trim() !== (areas[i].dataset.machine || "").trim()) return "fix";
    return explicit[i];
  }

  function showVerdict(i) {
    const v = verdictOf(i);
    const f = fields[i];
    f.classList.toggle("verdict-accept", v === "accept");
    f.classList.toggle("verdict-reject", v === "reject");
    const badge = f.querySelector("[data-verdict-badge]");
    if (badge) {
      badge.hidden = !v;
      badge.textContent = { accept: "accepted", fix: "fixed", reject: "rejected" }[v] || "";
      badge.className = `verdict-badge verdict-${v}`;
    }
    if (verdictInputs[i]) verdictInputs[i].value = explicit[i] || "";
    if (rejectBoxes[i]) rejectBoxes[i].hidden = explicit[i] !== "reject";
  }

  function setCursor(i) {
    if (!fields.length) return;
    cursor = Math.min(Math.max(i, 0), fields.length - 1);
    fields.forEach((f, k) => f.classList.toggle("current", k === cursor));
    fields[cursor].scrollIntoView({ block: "nearest" });
  }

  function clearCursor() {
    cursor = null;
    fields.forEach((f) => f.classList.remove("current"));
  }

  function setVerdict(i, v) {
    if (!editable) return;
    explicit[i] = v;
    showVerdict(i);
    updateAcceptLabel();
    saveDraft();
  }

  function verdictCounts() {
    const n = { accept: 0, fix: 0, reject: 0 };
    fields.forEach((_, i) => { n[verdictOf(i) || "accept"] += 1; });
    return n;
  }

  function changedCount() {
    return areas.filter((a) => a.value.trim() !== (a.dataset.machine || "").trim()).length;
  }

  function updateAcceptLabel() {
    const btn = document.getElementById("btn-accept");
    if (!btn) return;
    if (explicit.some((v) => v !== null)) {
      const c = verdictCounts();
      btn.firstChild.textContent = `Submit: ${c.accept} accepted, ${c.fix} fixed, ${c.reject} rejected `;
      return;
    }
    const n = changedCount();
    btn.firstChild.textContent = n ? `Accept with ${n} edit${n > 1 ? "s" : ""} ` : "Accept ";
  }

  function saveDraft() {
    if (!editable) return;
    const draft = { fields: {}, note: note ? note.value : "", reason: reason ? reason.value : "" };
    draft.verdicts = {};
    fields.forEach((f, i) => {
      draft.fields[f.dataset.field] = areas[i].value;
      if (explicit[i]) {
        draft.verdicts[f.dataset.field] = {
          verdict: explicit[i],
          reason: rejectReasons[i] ? rejectReasons[i].value : "",
          note: rejectNotes[i] ? rejectNotes[i].value : "",
        };
      }
    });
    try { localStorage.setItem(draftKey, JSON.stringify(draft)); } catch (_) { /* storage full or disabled */ }
  }

  function restoreDraft() {
    if (!editable || document.getElementById("error")) return;
    let draft = null;
    try { draft = JSON.parse(localStorage.getItem(draftKey) || "null"); } catch (_) { draft = null; }
    if (!draft || !draft.fields) return;
    let restored = false;
    fields.forEach((f, i) => {
      const v = draft.fields[f.dataset.field];
      if (typeof v === "string" && v !== areas[i].value) { areas[i].value = v; restored = true; }
    });
    fields.forEach((f, i) => {
      const v = draft.verdicts && draft.verdicts[f.dataset.field];
      if (!v || (v.verdict !== "accept" && v.verdict !== "reject")) return;
      explicit[i] = v.verdict;
      if (rejectReasons[i] && v.reason) rejectReasons[i].value = v.reason;
      if (rejectNotes[i] && v.note) rejectNotes[i].value = v.note;
      restored = true;
    });
    if (note && typeof draft.note === "string" && draft.note) { note.value = draft.note; restored = true; }
    if (reason && draft.reason) reason.value = draft.reason;
    const msg = document.getElementById("draft-note");
    if (restored && msg) msg.hidden = false;
  }

  restoreDraft();
  fields.forEach((field, i) => {
    const area = areas[i];
    refresh(field, area, false);
    area.addEventListener("input", () => { refresh(field, area, true); showVerdict(i); updateAcceptLabel(); saveDraft(); });
    showVerdict(i);
    const rr = rejectReasons[i];
    const rn = rejectNotes[i];
    if (rr) {
      rr.addEventListener("change", saveDraft);
      rr.addEventListener("keydown", (e) => {
        if (e.key === "Enter") { e.preventDefault(); if (rr.value && rn) rn.focus(); else say("Pick a reason for this field first."); }
        if (e.key === "Escape") { e.preventDefault(); rr.blur(); }
      });
    }
    if (rn) {
      rn.addEventListener("input", saveDraft);
      rn.addEventListener("keydown", (e) => {
        // Enter ends the note (and must not submit the form): on to the next field
        if (e.key === "Enter" && !e.ctrlKey && !e.metaKey) { e.preventDefault(); rn.blur(); setCursor(i + 1); }
        if (e.key === "Escape") { e.preventDefault(); rn.blur(); }
      });
    }
    area.addEventListener("focus", () => { lastField = i; });
  });
  if (note) note.addEventListener("input", saveDraft);
  if (reason) reason.addEventListener("change", saveDraft);
  updateAcceptLabel();

  function focusField(n) {
    const area = areas[n - 1];
    if (!area) return;
    area.focus();
    area.setSelectionRange(area.value.length, area.value.length);
    area.scrollIntoView({ block: "nearest" });
  }

  function undoField() {
    const i = lastField;
    if (i === null || !editable) { say("Focus a field first (1-9)."); return; }
    areas[i].value = areas[i].dataset.machine || "";
    refresh(fields[i], areas[i], true);
    updateAcceptLabel();
    saveDraft();
  }

  // ---- decisions ----
  const form = document.getElementById("decision-form");
  let submitting = false;
  if (form) {
    form.addEventListener("submit", (e) => {
      const action = e.submitter ? e.submitter.value : "";
      if (action === "reject" && reason && !reason.value) {
        e.preventDefault();
        reason.focus();
        say("Pick a reject reason, then press R or Enter.");
        return;
      }
      if (action === "accept") {
        const missing = fields.findIndex((_, i) => explicit[i] === "reject" && rejectReasons[i] && !rejectReasons[i].value);
        if (missing >= 0) {
          e.preventDefault();
          setCursor(missing);
          rejectReasons[missing].focus();
          say(`Pick a reject reason for ${fields[missing].dataset.field}, then Enter.`);
          return;
        }
      }
      if (submitting) { e.preventDefault(); return; }
      submitting = true;
      try { localStorage.removeItem(draftKey); } catch (_) { /* ignore */ }
    });
  }
  if (reason) {
    reason.addEventListener("keydown", (e) => {
      if ((e.key === "Enter" || e.key === "r" || e.key === "R") && reason.value) { e.preventDefault(); click("btn-reject"); }
      if (e.key === "Escape") reason.blur();
    });
  }
  window.addEventListener("beforeunload", saveDraft);

  // ---- lease ----
  const lease = document.getElementById("lease");
  let expires = lease && lease.dataset.expires ? Date.parse(lease.dataset.expires) : null;
  const ttl = (parseFloat(body.dataset.leaseTtl) || 600) * 1000;
  function showLease() {
    if (!lease || expires === null) return;
    const left = Math.round((expires - Date.now()) / 1000);
    lease.textContent = left > 0 ? `lease ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}` : "lease expired";
    lease.classList.toggle("expired", left <= 0);
  }
  async function renew() {
    try {
      const r = await api(`/api/items/${itemId}/renew`);
      if (r.ok) { expires = Date.parse((await r.json()).lease_expires_at); }
      else {
        const detail = (await r.json().catch(() => ({}))).detail || r.statusText;
        say(`Lease: ${detail}. Your text is kept in this browser.`);
      }
    } catch (_) { say("Cannot reach the server to renew the lease; your text is kept in this browser."); }
    showLease();
  }
  if (editable && lease) {
    setInterval(renew, Math.max(ttl / 3, 5000));
    setInterval(showLease, 1000);
    showLease();
  }

  // ---- keyboard ----
  document.addEventListener("keydown", (e) => {
    const typing = isTyping(document.activeElement);
    if (e.altKey && /^[1-9]$/.test(e.key)) { focusField(parseInt(e.key, 10)); e.preventDefault(); return; }
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { if (click("btn-accept")) e.preventDefault(); return; }
    if (e.key === "Escape") {
      if (help && !help.hidden) toggleHelp(false);
      else if (typing) document.activeElement.blur();
      else if (cursor !== null) clearCursor();
      return;
    }
    if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    const actions = {
      "?": () => toggleHelp(),
      // with a field selected (J / arrows), A E R give that field its verdict
      a: () => {
        if (cursor === null) { click("btn-accept"); return; }
        setVerdict(cursor, "accept");
        if (cursor < fields.length - 1) setCursor(cursor + 1);
        else say("Every field has a verdict: Ctrl+Enter submits.");
      },
      e: () => {
        const i = cursor !== null ? cursor : (lastField !== null ? lastField : 0);
        if (explicit[i] === "reject") setVerdict(i, null);
        if (cursor === null) setCursor(i);
        focusField(i + 1);
      },
      r: () => {
        if (cursor !== null) {
          setVerdict(cursor, "reject");
          const rr = rejectReasons[cursor];
          if (rr) rr.focus();
          say("Pick a reason (type its first letters), Enter, then a note (optional), Enter.");
          return;
        }
        if (reason && !reason.value) { reason.focus(); say("Pick a reject reason, then press R or Enter."); }
        else click("btn-reject");
      },
      j: () => setCursor(cursor === null ? 0 : cursor + 1),
      ArrowDown: () => setCursor(cursor === null ? 0 : cursor + 1),
      ArrowUp: () => setCursor(cursor === null ? 0 : cursor - 1),
      s: () => click("btn-skip"),
      n: () => { if (!click("btn-next")) say("Decide or skip this item first (A, R, S)."); },
      u: undoField,
      " ": togglePlay,
      k: togglePlay,
      ",": () => step(-1),
      ".": () => step(1),
      ArrowLeft: () => step(-1),
      ArrowRight: () => step(1),
      "[": () => changeSpeed(-1),
      "]": () => changeSpeed(1),
      o: () => toggleOverlay(),
    };
    if (/^[1-9]$/.test(key)) { focusField(parseInt(key, 10)); e.preventDefault(); return; }
    const fn = actions[key];
    if (fn) { e.preventDefault(); fn(); }
  });
})();
