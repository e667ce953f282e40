"""Before/after figures for a fine-tune on data/finetune_format.jsonl: held-out prompts, greedy replies.

    llama finetune data/finetune_format.jsonl --val data/finetune_format_heldout.jsonl -o fmt-adapter
    python bench/finetune_format.py fmt-adapter [-m BASE] [--threads 1]

For the base model and for the base model with the adapter, over every held-out prompt, prints
how many replies are exactly the trained format (one JSON object with the keys "answer" and
"topic"), how many name the right topic, how many contain the expected answer, and the mean loss
per assistant token of the expected replies. Then a few replies side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import torch

from llama_cli import load
from llama_cli.chat_template import template_text
from llama_cli.finetune import encode_conversation, read_conversations
from llama_cli.trainer import IGNORE

HELD_OUT = Path(__file__).resolve().parent.parent / "data" / "finetune_format_heldout.jsonl"


def parse(reply: str) -> dict | None:
    try:
        value = json.loads(reply.strip())
    except ValueError:
        return None
    return value if isinstance(value, dict) and set(value) == {"answer", "topic"} else None


def measure(llm, conversations, max_tokens: int) -> tuple[dict[str, float], list[str]]:  # type: ignore[no-untyped-def]
    template = template_text(llm.checkpoint.chat_template, "auto")
    fmt = topic = answer = 0
    loss_sum, loss_n = 0.0, 0
    replies = []
    for number, messages in conversations:
        prompt, expected = messages[:-1], json.loads(messages[-1]["content"])
        reply = llm.generate(prompt[-1]["content"], chat=True, max_tokens=max_tokens, temperature=0)
        replies.append(reply)
        parsed = parse(reply)
        fmt += parsed is not None
        topic += parsed is not None and parsed["topic"] == expected["topic"]
        answer += re.search(rf"(?<!\w){re.escape(expected['answer'].lower())}(?!\w)", reply.lower()) is not None
        example = encode_conversation(messages, llm.tokenizer, template, f"line {number}")
        with torch.no_grad():
            logits = llm.model(torch.tensor([example.inputs]), cache=None)
        targets = torch.tensor([example.targets])
        loss_sum += float(torch.nn.functional.cross_entropy(logits[0], targets[0], ignore_index=IGNORE, reduction="sum"))
        loss_n += int((targets != IGNORE).sum())
    n = len(conversations)
    return {"format": fmt / n, "topic": topic / n, "answer": answer / n, "loss": loss_sum / loss_n}, replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter")
    parser.add_argument("-m", "--model", default=None)
    parser.add_argument("--data", default=str(HELD_OUT))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("-n", "--max-tokens", type=int, default=40)
    args = parser.parse_args()
    conversations = read_conversations(args.data)
    results = {}
    for name, adapter in (("base", None), ("adapter", args.adapter)):
        began = time.monotonic()
        llm = load(args.model, dtype="float32", threads=args.threads, adapter=adapter)
        results[name] = measure(llm, conversations, args.max_tokens)
        print(f"{name}: measured in {time.monotonic() - began:.0f} s")
    print(f"\n{len(conversations)} held-out prompts ({args.data})")
    print(f"{'':10}{'format':>8}{'topic':>8}{'answer':>8}{'loss':>8}{'ppl':>8}")
    for name, (m, _) in results.items():
        print(f"{name:10}{m['format']:8.0%}{m['topic']:8.0%}{m['answer']:8.0%}{m['loss']:8.3f}{math.exp(m['loss']):8.2f}")
    print()
    for (number, messages), before, after in list(zip(conversations, results["base"][1], results["adapter"][1]))[:6]:
        print(f"Q: {messages[-2]['content']}\n  base:    {before.strip()[:120]!r}\n  adapter: {after.strip()[:120]!r}")


if __name__ == "__main__":
    main()
