"""Text tools the checks share: negation within a clause, shortening, joining phrases, and
the record's own grounding facts (quoted word for word, they are grounding, not claims)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from any2capins.schemas import Record

# --------------------------------------------------------------------------- shared text tools

_NEGATOR = re.compile(
    r"\b(?:no|not|never|without|neither|nor|none|nothing|nobody|instead\s+of|rather\s+than)\b"
    r"|n't\b",
    re.IGNORECASE,
)
# A clause boundary stops a negation: "no zoom. The camera pans left" pans.
_CLAUSE_END = re.compile(
    r"[.;:!?()]|\b(?:but|however|although|though|yet|whereas|while|then)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*")


def _negated(text: str, start: int, end: int, window: int) -> bool:
    """A negator up to ``window`` words before ``start`` in the same clause, or inside the
    phrase before its last word ("the camera does not move")."""
    last = max((m.start() for m in _WORD.finditer(text, start, end)), default=start)
    cut = max((m.end() for m in _CLAUSE_END.finditer(text, 0, start)), default=0)
    before = [m.start() for m in _WORD.finditer(text, cut, start)]
    from_ = start if window == 0 else (before[-window] if len(before) >= window else cut)
    return _NEGATOR.search(text, from_, last) is not None


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _join(phrases: Iterable[str]) -> str:
    return "; ".join(dict.fromkeys(" ".join(p.split()) for p in phrases))


def _fact_texts(record: Record) -> list[str]:
    """The record's grounding facts, as the condition types word them for the writer.

    Stating a measured fact word for word is grounding, not a claim to check: the grounded
    writer puts pose facts in both main_object and action, and pose's "2 distinct people"
    next to identities' "1 main subject: a cup" is two measurements, not a miscount.
    """
    from any2capins.annotators.conditions import condition_types  # the registry, loaded once

    out: list[str] = []
    try:
        types = condition_types()
    except Exception:  # noqa: BLE001 - a broken plugin must not break the checks
        return out
    for name in record.conditions.present():
        ctype = types.get(name)
        try:
            summary = type(ctype).read(record) if ctype is not None else None
            facts = ctype.grounding_facts(summary, record) if ctype and summary else []
        except Exception:  # noqa: BLE001 - same: the facts stage reports such plugins
            continue
        out.extend(str(f).strip() for f in facts if str(f).strip())
    return out


def _strip_facts(text: str, facts: list[str]) -> str:
    for fact in sorted(facts, key=len, reverse=True):
        body = fact.rstrip(".!? ")
        if len(body.split()) > 2:
            text = re.sub(re.escape(body) + r"[.!?]?", " ", text, flags=re.IGNORECASE)
    return text


def _fact_token_runs(facts: list[str]) -> list[list[str]]:
    runs = [toks for f in facts if len(toks := [w.lower() for w in _WORD.findall(f)]) > 2]
    return sorted(runs, key=len, reverse=True)


def _without_runs(tokens: list[str], runs: list[list[str]]) -> list[str]:
    for run in runs:
        n, i, out = len(run), 0, []
        while i < len(tokens):
            if tokens[i : i + n] == run:
                i += n
            else:
                out.append(tokens[i])
                i += 1
        tokens = out
    return tokens
