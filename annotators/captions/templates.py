"""The versioned prompt templates shipped in ``templates/`` (``<name>.<version>.txt``):
loading, rendering (``string.Template``, ``$name`` placeholders) and the hashes recorded in
every record's provenance."""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from importlib import resources

from any2capins.annotators.captions.config import PARTS, SHORT_PROMPT

TEMPLATE_NAMES: tuple[str, ...] = ("system", "context", *PARTS, "condition_rules", "repair")

# What each part is asked to aim for; the paper's captions average 231 words in total and
# its short prompts 55.
TARGET_WORDS: dict[str, int] = {
    "dense": 85,
    "main_object": 40,
    "background": 35,
    "camera": 20,
    "style": 25,
    "action": 40,
    SHORT_PROMPT: 55,
}

TITLES: dict[str, str] = {
    "dense": "dense caption",
    "main_object": "main object caption",
    "background": "background caption",
    "camera": "camera caption",
    "style": "style caption",
    "action": "action caption",
    SHORT_PROMPT: "short prompt",
}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TemplateSet:
    version: str
    texts: dict[str, str]

    def hashes(self) -> dict[str, str]:
        return {f"{name}.{self.version}": _digest(text) for name, text in self.texts.items()}

    def render(self, name: str, **values: object) -> str:
        return string.Template(self.texts[name]).substitute(values).strip()


def load_templates(version: str) -> TemplateSet:
    """Every template of one version; a missing file is an error naming it."""
    folder = resources.files("any2capins.annotators.captions") / "templates"
    texts: dict[str, str] = {}
    for name in TEMPLATE_NAMES:
        path = folder / f"{name}.{version}.txt"
        if not path.is_file():
            raise FileNotFoundError(
                f"prompt template {name}.{version}.txt is not in annotators/captions/templates "
                "(is the package data installed?)"
            )
        texts[name] = path.read_text(encoding="utf-8")
    return TemplateSet(version, texts)


def rules_hash(rules: dict[str, list[str]]) -> str:
    """Hash of the condition rules a short-prompt request carried (they come from code)."""
    blob = "\n".join(f"{name}: {rule}" for name in sorted(rules) for rule in rules[name])
    return _digest(blob)
