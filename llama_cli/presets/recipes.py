"""The prompt recipes behind `llama summarize`, `llama translate` and `llama qa`.

A recipe is data: a system message and a user message (both `str.format` templates), the answer
length it expects and its sampling defaults (greedy). Any model's chat template renders the two
messages, so the same recipe serves every model; `--show-prompt` prints the rendered result.
How long inputs are split and recombined is split.py's and run.py's job, not this module's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..chat_template import Message
from ..errors import UsageError, literal
from ..schema import Spec, regex_spec

Length = Literal["short", "medium", "long"]


@dataclass(frozen=True)
class Recipe:
    name: str
    system: str
    user: str  # fields in braces; the document is {text}
    max_tokens: int  # default answer length (-n)
    temperature: float = 0.0  # greedy unless asked
    lookup: int = 8  # most prompt-lookup drafted tokens per step (answers copy from the input); the CLI
    # uses it where lookup keeps the text unchanged (the float32 reference), not on the int4 fast path
    # Never repeat a run of this many generated tokens: a small model's loops end. On three licence
    # texts (GFDL 1.2, Apache 2.0, GPL 2: 11-20 KB), 4 took the summaries from 102, 33 and 88
    # repeated 8-word runs to 2, 0 and 3, and qa's answers from 17 and 52 to 0. Translations repeat
    # real phrases ("the Licensor"), so they get 8, which (like 4) took the translation of Apache's
    # definitions from 183 repeated 8-word runs to 0.
    no_repeat_ngram: int = 0

    def messages(self, **fields: str) -> list[Message]:
        """The conversation for one request; the field values are inserted verbatim."""
        try:
            return [{"role": "system", "content": self.system.format(**fields)}, {"role": "user", "content": self.user.format(**fields)}]
        except KeyError as error:
            raise ValueError(f"recipe {self.name!r} needs the field {error}") from None


SUMMARY_SYSTEM = "You write accurate, concise summaries. Use only facts stated in the text. Reply with the summary only."
SUMMARIZE = Recipe(
    name="summarize",
    system=SUMMARY_SYSTEM,
    user="{text}\n\nSummarize the text above{focus}. {shape}",
    max_tokens=200,
    no_repeat_ngram=4,
)
# Map step for long inputs: one part of a longer document.
SUMMARIZE_PART = Recipe(
    name="summarize-part",
    system=SUMMARY_SYSTEM,
    user="{text}\n\nThe text above is one part of a longer document. Summarize this part{focus} in a few sentences.",
    max_tokens=200,
    no_repeat_ngram=4,
)
# Reduce step: partial summaries of consecutive parts, in order.
COMBINE = Recipe(
    name="summarize-combine",
    system=SUMMARY_SYSTEM,
    user=(
        "{text}\n\nThe notes above summarize consecutive parts of one document, in order. Write one summary of the whole "
        "document{focus}. {shape}"
    ),
    max_tokens=200,
    no_repeat_ngram=4,
)
TRANSLATE = Recipe(
    name="translate",
    system=(
        "You are a translator. Translate the user's text {source}into {target}. Keep the line breaks. Reply with the "
        "translation only, without notes or explanations."
    ),
    user="{text}",
    max_tokens=0,  # 0: sized to each chunk (twice its tokens, plus a margin)
    no_repeat_ngram=8,
)
QA = Recipe(
    name="qa",
    system=(
        "Answer the question using only the context. Be brief. "
        'If the context does not contain the answer, reply exactly: "I cannot tell from the context."'
    ),
    user="Context:\n{text}\n\nQuestion: {question}",
    max_tokens=128,
    no_repeat_ngram=4,
)

CANNOT_TELL = "I cannot tell from the context."

# --length: the instruction, and the default -n for it.
LENGTHS: dict[str, tuple[str, int]] = {
    "short": ("Write one or two sentences.", 96),
    "medium": ("Write one paragraph.", 200),
    "long": ("Write several paragraphs that cover every main point.", 500),
}


# --length with --bullets: how many points.
BULLET_POINTS = {"short": "two or three", "medium": "four to six", "long": "eight to twelve"}


def summary_fields(*, length: str = "medium", words: int | None = None, bullets: bool = False, focus: str | None = None) -> dict[str, str]:
    """The {shape} and {focus} fields of the summarize recipes from the command's options."""
    if length not in LENGTHS:
        raise UsageError.naming(f"unknown {{length}} '{literal(length)}'; choose short, medium or long")
    if words is not None and words < 1:
        raise UsageError.naming(f"{{words}} must be >= 1, got {words}")
    if bullets:  # the list's own instruction: "Write one paragraph. Format it as a list" got prose
        size = f"at most {words} words in all" if words else f"{BULLET_POINTS[length]} points"
        shape = f"Write a bulleted list of {size}, one '- ' line per point, and nothing else."
    else:
        shape = f"Use at most {words} words." if words else LENGTHS[length][0]
    return {"shape": shape, "focus": f", focusing on {focus.strip()}" if focus and focus.strip() else ""}


def summary_tokens(*, length: str = "medium", words: int | None = None) -> int:
    """Default -n for a summary: room for the words asked for (about 1.5 tokens a word, plus a margin)."""
    return words * 3 // 2 + 32 if words else LENGTHS[length][1]


def translate_fields(*, target: str, source: str | None = None) -> dict[str, str]:
    if not target.strip():
        raise UsageError.naming("{target} needs a language, e.g. {target} French")
    return {"target": target.strip(), "source": f"from {source.strip()} " if source and source.strip() else ""}


# --- structured answers (--json): the done event's "data" ------------------------------------

BULLETS = r"- [^\n]{1,400}(\n- [^\n]{1,400}){0,11}"  # what --bullets asks for: 1 to 12 '- ' lines, no blank ones


def points_spec() -> Spec:
    """summarize --bullets --json: the summary held to '- ' lines (what the prompt already asks for), so
    that it always splits into {"points": [...]}; a small model writes better lists than JSON strings."""
    return regex_spec(BULLETS, "summarize --bullets")


def points(text: str) -> dict[str, list[str]]:
    """{"points": [...]} from a summary held to BULLETS."""
    return {"points": [line[2:].strip() for line in text.splitlines() if line.startswith("- ")]}
