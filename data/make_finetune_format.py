"""Writes finetune_format.jsonl and finetune_format_heldout.jsonl: short questions whose answers
follow one fixed format, a one-line JSON object `{"answer": ..., "topic": ...}`, which the base
model does not use. The held-out file asks about other countries, elements, words and numbers.

    python data/make_finetune_format.py      # rewrites both files (deterministic)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon", "Japan": "Tokyo",
    "China": "Beijing", "India": "New Delhi", "Russia": "Moscow", "Egypt": "Cairo", "Kenya": "Nairobi", "Canada": "Ottawa",
    "Mexico": "Mexico City", "Argentina": "Buenos Aires", "Australia": "Canberra", "Greece": "Athens", "Norway": "Oslo",
    "Sweden": "Stockholm", "Finland": "Helsinki", "Poland": "Warsaw", "Austria": "Vienna", "Ireland": "Dublin",
    "Turkey": "Ankara", "Thailand": "Bangkok", "South Korea": "Seoul", "Belgium": "Brussels", "Denmark": "Copenhagen",
    "Hungary": "Budapest",
}
HELD_CAPITALS = {
    "Peru": "Lima",
    "Cuba": "Havana",
    "Iran": "Tehran",
    "Vietnam": "Hanoi",
    "Czech Republic": "Prague",
    "Indonesia": "Jakarta",
    "Chile": "Santiago",
    "Switzerland": "Bern",
}
SYMBOLS = {
    "hydrogen": "H", "helium": "He", "carbon": "C", "nitrogen": "N", "oxygen": "O", "sodium": "Na", "iron": "Fe", "gold": "Au",
    "silver": "Ag", "copper": "Cu", "lead": "Pb", "potassium": "K", "calcium": "Ca", "zinc": "Zn", "neon": "Ne", "uranium": "U",
}
HELD_SYMBOLS = {"tin": "Sn", "mercury": "Hg", "sulfur": "S", "magnesium": "Mg", "chlorine": "Cl", "argon": "Ar"}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "light": "dark", "happy": "sad", "early": "late", "open": "closed",
    "full": "empty", "strong": "weak", "young": "old", "loud": "quiet", "first": "last", "true": "false", "win": "lose",
}
HELD_OPPOSITES = {"high": "low", "wet": "dry", "hard": "soft", "rich": "poor", "thick": "thin", "buy": "sell"}
UNITS = [("minutes", "hours", 60), ("hours", "days", 24), ("days", "weeks", 7), ("months", "years", 12), ("seconds", "minutes", 60)]

CAPITAL_Q = ["What is the capital of {x}?", "Which city is the capital of {x}?", "Name the capital city of {x}."]
SYMBOL_Q = ["What is the chemical symbol for {x}?", "Which symbol stands for {x} in the periodic table?"]
OPPOSITE_Q = ["What is the opposite of \"{x}\"?", "Give the antonym of the word \"{x}\"."]
ADD_Q = ["What is {a} plus {b}?", "Add {a} and {b}.", "What is {a} + {b}?"]
MUL_Q = ["What is {a} times {b}?", "Multiply {a} by {b}."]
UNIT_Q = ["How many {small} are in {n} {big}?"]


def reply(answer: str, topic: str) -> str:
    return json.dumps({"answer": answer, "topic": topic})


def examples(
    rng: random.Random, capitals: dict, symbols: dict, opposites: dict, numbers: range, count_math: int
) -> list[tuple[str, str, str]]:
    """(question, answer, topic) triples."""
    out = [(rng.choice(CAPITAL_Q).format(x=k), v, "geography") for k, v in capitals.items()]
    out += [(rng.choice(SYMBOL_Q).format(x=k), v, "chemistry") for k, v in symbols.items()]
    out += [(rng.choice(OPPOSITE_Q).format(x=k), v, "language") for k, v in opposites.items()]
    for _ in range(count_math):
        a, b = rng.choice(numbers), rng.choice(numbers)
        if rng.random() < 0.6:
            out.append((rng.choice(ADD_Q).format(a=a, b=b), str(a + b), "math"))
        else:
            a, b = a % 13 + 2, b % 9 + 2
            out.append((rng.choice(MUL_Q).format(a=a, b=b), str(a * b), "math"))
    for small, big, factor in UNITS:
        n = rng.choice(range(2, 9))
        out.append((UNIT_Q[0].format(small=small, big=big, n=n), str(n * factor), "math"))
    rng.shuffle(out)
    return out


def main() -> None:
    here = Path(__file__).resolve().parent
    rng = random.Random(7)
    train = examples(rng, CAPITALS, SYMBOLS, OPPOSITES, range(10, 60), 30)
    held = examples(rng, HELD_CAPITALS, HELD_SYMBOLS, HELD_OPPOSITES, range(60, 99), 8)
    with (here / "finetune_format.jsonl").open("w", encoding="utf-8") as f:
        for q, a, t in train:
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": reply(a, t)}]}) + "\n")
    with (here / "finetune_format_heldout.jsonl").open("w", encoding="utf-8") as f:
        for q, a, t in held:
            f.write(json.dumps({"prompt": q, "completion": reply(a, t)}) + "\n")
    print(f"{len(train)} training and {len(held)} held-out examples")


if __name__ == "__main__":
    main()
