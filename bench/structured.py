"""Structured output on the default model: how often the JSON is valid, and what masking costs per token.

    python bench/structured.py                  # all schemas, the default model on its default path
    python bench/structured.py --limit 10 --out /tmp/structured.jsonl
    python bench/structured.py --cases 28:56 --out b.jsonl    # a slice (to run in parallel), then:
    python bench/structured.py --report a.jsonl b.jsonl       # the figures from saved rows

For each case: a chat prompt with the schema shown in the system message (as `llama generate
--chat --schema` does), greedy decoding, at most -n tokens. Valid means the output is complete
and passes `jsonschema` validation against the schema (an independent validator, not llguidance).
"Sensible" is checked on the simple cases that have an expected value (e.g. the capital of France).

Overhead is measured two ways: (1) the time spent computing masks and advancing the matcher, per
generated token, against the decode time per token (both from the same run); (2) decode time
per step of the same prompt with no constraint, forced to the same number of tokens
(--ignore-eos), the two runs interleaved so that a shared machine's load drifts over both alike.
`--replay` times the matcher alone on the saved outputs (no model running beside it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (prompt, --schema value, multi, expected: {field: substring} or None)
CASES: list[tuple[str, str, bool, dict[str, str] | None]] = [
    ("What is the capital of France?", "city, country", False, {"city": "Paris"}),
    ("What is the capital of Japan?", "city, country", False, {"city": "Tokyo"}),
    ("What is the capital of Italy?", "city, country", False, {"city": "Rome"}),
    ("Invent a person.", "name, age int", False, None),
    ("Invent a person.", "name, age int, bio: one sentence", False, None),
    ("Describe a dog.", "name, breed, age int, good_boy bool", False, None),
    ("Describe a book.", "title, author, year int, pages int", False, None),
    ("Describe a city.", "name, country, population int, coastal bool", False, None),
    ("Give a recipe.", "dish, minutes int, vegetarian bool", False, None),
    ("Rate the film Casablanca.", "title, score float: out of 10, review: one sentence", False, {"title": "Casablanca"}),
    ("What is 2 + 2?", "answer int", False, {"answer": "4"}),
    ("Is the sky blue?", "answer bool, reason: one sentence", False, None),
    ("Name a planet.", "planet, moons int", False, None),
    ("Describe a car.", "make\nmodel\nyear int\nelectric bool", False, None),
    ("Describe the weather.", "summary: a few words, temperature_c float, rain bool", False, None),
    ("Invent a product.", "name, price float, in_stock bool, description: one sentence", False, None),
    ("Describe a song.", "title, artist, year int", False, None),
    ("Describe a country.", "name, capital, continent, population int", False, None),
    ("Translate 'hello' to French.", "word, translation", False, {"translation": "onjour"}),
    ("Summarize: The meeting moved to Friday.", "summary, day", False, {"day": "Friday"}),
    ("List three fruits.", "name, color", True, None),
    ("List three people.", "name, age int", True, None),
    ("List two cities.", "city, country", True, None),
    ("List some colors.", "color", True, None),
    ("List planets.", "planet, order int", True, None),
    ("Invent a user.", '{"type": "object", "properties": {"username": {"type": "string"}, "email": {"type": "string", "format": "email"}}, "required": ["username", "email"], "additionalProperties": false}', False, None),
    ("Pick a color.", '{"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]}', False, None),
    ("How do you feel?", '{"type": "object", "properties": {"mood": {"type": "string", "enum": ["happy", "sad", "neutral"]}, "intensity": {"type": "integer", "minimum": 1, "maximum": 5}}, "required": ["mood", "intensity"], "additionalProperties": false}', False, None),
    ("Invent an event.", '{"type": "object", "properties": {"name": {"type": "string"}, "date": {"type": "string", "format": "date"}}, "required": ["name", "date"], "additionalProperties": false}', False, None),
    ("Give a phone number.", '{"type": "object", "properties": {"phone": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"}}, "required": ["phone"], "additionalProperties": false}', False, None),
    ("Give three tags for a blog post about cooking.", '{"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3}}, "required": ["tags"], "additionalProperties": false}', False, None),
    ("Give a point on a map.", '{"type": "object", "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90}, "lon": {"type": "number", "minimum": -180, "maximum": 180}}, "required": ["lat", "lon"], "additionalProperties": false}', False, None),
    ("Describe a company.", '{"type": "object", "properties": {"name": {"type": "string"}, "address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}, "required": ["street", "city"], "additionalProperties": false}}, "required": ["name", "address"], "additionalProperties": false}', False, None),
    ("Make a todo list.", '{"type": "object", "properties": {"todos": {"type": "array", "items": {"type": "object", "properties": {"task": {"type": "string"}, "done": {"type": "boolean"}}, "required": ["task", "done"], "additionalProperties": false}, "maxItems": 4}}, "required": ["todos"], "additionalProperties": false}', False, None),
    ("Give a short answer.", '{"type": "object", "properties": {"answer": {"type": "string", "maxLength": 40}}, "required": ["answer"], "additionalProperties": false}', False, None),
    ("Give a number.", '{"type": "object", "properties": {"value": {"type": "integer", "exclusiveMinimum": 0, "multipleOf": 5}}, "required": ["value"], "additionalProperties": false}', False, None),
    ("Say yes or no.", '{"type": "object", "properties": {"ok": {"const": true}}, "required": ["ok"]}', False, None),
    ("Describe a shape.", '{"type": "object", "properties": {"shape": {"anyOf": [{"type": "object", "properties": {"circle_radius": {"type": "number"}}, "required": ["circle_radius"], "additionalProperties": false}, {"type": "object", "properties": {"square_side": {"type": "number"}}, "required": ["square_side"], "additionalProperties": false}]}}, "required": ["shape"], "additionalProperties": false}', False, None),
    ("Describe a person, maybe with a nickname.", '{"type": "object", "properties": {"name": {"type": "string"}, "nickname": {"type": ["string", "null"]}}, "required": ["name", "nickname"], "additionalProperties": false}', False, None),
    ("Invent a score table.", '{"type": "object", "properties": {"scores": {"type": "object", "additionalProperties": {"type": "integer"}, "maxProperties": 3}}, "required": ["scores"], "additionalProperties": false}', False, None),
    ("Give a website.", '{"type": "object", "properties": {"url": {"type": "string", "format": "uri"}}, "required": ["url"], "additionalProperties": false}', False, None),
    ("Invent an ID.", '{"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}}, "required": ["id"], "additionalProperties": false}', False, None),
    ("When is noon?", '{"type": "object", "properties": {"time": {"type": "string", "format": "time"}}, "required": ["time"], "additionalProperties": false}', False, None),
    ("List some numbers.", '{"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 5}', False, None),
    ("Name a color.", '{"type": "string", "enum": ["red", "green", "blue", "yellow"]}', False, None),
    ("Give a word.", '{"type": "string", "minLength": 3, "maxLength": 12, "pattern": "^[a-z]+$"}', False, None),
    ("Is water wet?", '{"type": "boolean"}', False, None),
    ("Give a temperature.", '{"type": "number"}', False, None),
    ("Describe a matrix.", '{"type": "object", "properties": {"rows": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 3}, "maxItems": 3}}, "required": ["rows"], "additionalProperties": false}', False, None),
    ("Define a word.", '{"$defs": {"sense": {"type": "object", "properties": {"meaning": {"type": "string"}}, "required": ["meaning"], "additionalProperties": false}}, "type": "object", "properties": {"word": {"type": "string"}, "senses": {"type": "array", "items": {"$ref": "#/$defs/sense"}, "maxItems": 2}}, "required": ["word", "senses"], "additionalProperties": false}', False, None),
    ("Describe an order.", '{"type": "object", "properties": {"id": {"type": "integer"}, "items": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}, "required": ["sku", "qty"], "additionalProperties": false}, "maxItems": 3}, "total": {"type": "number"}}, "required": ["id", "items", "total"], "additionalProperties": false}', False, None),
    ("Classify the sentiment of: I love it!", '{"type": "object", "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]}}, "required": ["sentiment"], "additionalProperties": false}', False, {"sentiment": "positive"}),
    ("Extract: Alice is 30 years old.", "name, age int", False, {"name": "Alice", "age": "30"}),
    ("Extract: Bob lives in Berlin.", "name, city", False, {"name": "Bob", "city": "Berlin"}),
    ("Invent a key-value config.", '{"type": "object"}', False, None),
    ("Describe a movie with optional rating.", '{"type": "object", "properties": {"title": {"type": "string"}, "rating": {"type": "number"}}, "required": ["title"], "additionalProperties": false}', False, None),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("-n", "--max-tokens", type=int, default=160)
    parser.add_argument("--limit", type=int, default=0, help="run only the first N cases")
    parser.add_argument("--cases", default=None, help="a slice of the cases, START:END")
    parser.add_argument("--report", nargs="+", default=None, help="print the figures from these saved JSON-lines files and exit")
    parser.add_argument("--replay", action="store_true", help="with --report: also time the constraint alone on the saved outputs")
    parser.add_argument("--speed-cases", type=int, default=8, help="cases re-run without a constraint for the A/B speed figure")
    parser.add_argument("--out", default=None, help="write one JSON line per case here")
    args = parser.parse_args()

    if args.report:
        rows = [json.loads(line) for path in args.report for line in Path(path).read_text().splitlines() if line.strip()]
        rows = sorted({r["case"]: r for r in rows}.values(), key=lambda r: r["case"])
        report(rows)
        if args.replay:
            replay(rows, args.model)
        return

    import jsonschema

    from llama_cli import load
    from llama_cli.schema import spec_from_options

    llm = load(args.model, dtype=args.dtype)
    first, last = (int(x) for x in args.cases.split(":")) if args.cases else (0, args.limit or len(CASES))
    cases = list(enumerate(CASES))[first:last]
    rows, out = [], open(args.out, "w") if args.out else None  # noqa: SIM115
    print(f"{len(cases)} cases on {llm.checkpoint.source.name} ({llm.path_label}), greedy, -n {args.max_tokens}", file=sys.stderr)
    for k, (prompt, schema, multi, expected) in cases:
        spec = spec_from_options(schema_multi=schema) if multi else spec_from_options(schema=schema)
        assert spec is not None and spec.schema is not None
        generation = llm.stream(prompt, chat=True, system=spec.prompt_note(), temperature=0, max_tokens=args.max_tokens, constraint=spec)
        started = time.perf_counter()
        for _ in generation:
            pass
        wall = time.perf_counter() - started
        result = generation.results[0]
        valid, error = False, ""
        if result.complete:
            try:
                jsonschema.validate(json.loads(result.text), spec.schema)
                valid = True
            except (ValueError, jsonschema.ValidationError) as exc:
                error = str(exc).splitlines()[0]
        else:
            error = f"incomplete ({result.stop_reason})"
        sensible = None
        if expected is not None and valid:
            data = json.loads(result.text)
            sensible = all(want.lower() in str(data.get(key, "")).lower() for key, want in expected.items())
        tokens = len(result.token_ids)
        row = {
            "case": k, "prompt": prompt, "schema": schema, "multi": multi, "text": result.text, "valid": valid, "error": error,
            "sensible": sensible, "tokens": tokens, "decode_seconds": generation.stats.decode_seconds, "constraint_seconds": generation.stats.constraint_seconds, "wall": wall,
        }  # fmt: skip
        rows.append(row)
        if out:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
        mark = "ok " if valid else "BAD"
        print(f"{mark} {k:2d} {tokens:3d} tok {1e3 * generation.stats.constraint_seconds / max(tokens, 1):5.2f} ms/tok mask | {result.text[:100]}", file=sys.stderr, flush=True)

    report(rows)

    if args.speed_cases:
        speed(llm, [r for r in rows if r["tokens"] > 4][: args.speed_cases], args.max_tokens)


def speed(llm, rows: list[dict], max_tokens: int, rounds: int = 2) -> None:  # type: ignore[no-untyped-def, type-arg]
    """Decode time per step with the constraint and without it (same prompt, forced to the same
    length), interleaved so that the load of a shared machine drifts over both alike; medians."""
    import statistics

    from llama_cli.schema import spec_from_options

    constrained, free = [], []
    for r in rows:
        prompt, schema, multi, _ = CASES[r["case"]]
        spec = spec_from_options(schema_multi=schema) if multi else spec_from_options(schema=schema)
        for _ in range(rounds):
            runs = []
            for options in ({"max_tokens": max_tokens, "constraint": spec}, {"max_tokens": r["tokens"], "ignore_eos": True}):
                generation = llm.stream(prompt, chat=True, system=spec.prompt_note(), temperature=0, **options)  # type: ignore[union-attr]
                for _ in generation:
                    pass
                runs.append(generation.stats.decode_seconds / max(len(generation.results[0].token_ids) - 1, 1))
            constrained.append(runs[0])
            free.append(runs[1])
    a, b = statistics.median(constrained), statistics.median(free)
    print(f"A/B over {len(rows)} cases x {rounds}: {1e3 * a:.1f} ms per decode step constrained, {1e3 * b:.1f} unconstrained ({100 * (a / b - 1):+.1f}%)")


def report(rows: list[dict]) -> None:  # type: ignore[type-arg]
    valid = sum(r["valid"] for r in rows)
    judged = [r for r in rows if CASES[r["case"]][3] is not None]
    incomplete = [r for r in rows if r["error"].startswith("incomplete")]
    sensible = sum(bool(r["sensible"]) for r in judged)
    tokens = sum(r["tokens"] for r in rows)
    mask_ms = 1e3 * sum(r["constraint_seconds"] for r in rows) / tokens
    steps = sum(max(r["tokens"] - 1, 0) for r in rows)  # forward passes after the first token
    decode_ms = 1e3 * (sum(r["decode_seconds"] for r in rows) - sum(r["constraint_seconds"] for r in rows)) / max(steps, 1)
    print(f"valid: {valid} of {len(rows)} ({100 * valid / len(rows):.0f}%)")
    print(f"sensible (cases with an expected value): {sensible} of {len(judged)}")
    print(f"masking: {mask_ms:.2f} ms per token; model step without it: {decode_ms:.1f} ms per token; overhead {100 * mask_ms / decode_ms:.1f}%")
    print(f"not valid: {len(rows) - valid} ({len(incomplete)} cut by -n, the rest failed validation)")
    for r in rows:
        if not r["valid"]:
            print(f"  case {r['case']}: {r['error']}: {r['text'][:90]}")


def replay(rows: list[dict], model: str | None) -> None:  # type: ignore[type-arg]
    """Mask and advance through each saved output's tokens with a fresh matcher, no model running:
    the first mask of a schema (which builds its lexer) apart from the steady per-token cost."""
    import torch

    from llama_cli import load
    from llama_cli.constraints import Constraint
    from llama_cli.schema import spec_from_options

    llm = load(model)
    vocab = llm.model.config.vocab_size
    logits = torch.randn(vocab)
    first, steady, steps = 0.0, 0.0, 0
    for r in rows:
        _, schema, multi, _ = CASES[r["case"]]
        spec = spec_from_options(schema_multi=schema) if multi else spec_from_options(schema=schema)
        rule = Constraint(spec, llm.tokenizer, vocab).matcher()  # type: ignore[arg-type]
        for j, token in enumerate(llm.tokenizer.encode(r["text"], bos=False)):
            started = time.perf_counter()
            rule.mask(logits)
            rule.advance(token)
            spent = time.perf_counter() - started
            if j == 0:
                first += spent
            else:
                steady, steps = steady + spent, steps + 1
    print(f"replay: first mask of a schema {1e3 * first / len(rows):.1f} ms; then {1e3 * steady / max(steps, 1):.3f} ms per token (mask + advance, {steps} tokens)")


if __name__ == "__main__":
    main()
