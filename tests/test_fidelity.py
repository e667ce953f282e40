"""The default model against Hugging Face transformers reading the same GGUF file in float32."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from llama_cli.kv_cache import KVCache

pytestmark = pytest.mark.real_model

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "The quick brown fox jumps over the lazy dog",
    "Once upon a time, in a land far away, there lived a",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers(llm, hf_model, hf_tokenizer, prompt: str) -> None:  # type: ignore[no-untyped-def]
    ids = llm.tokenizer.encode(prompt)
    assert ids == hf_tokenizer(prompt)["input_ids"]
    tokens = torch.tensor([ids])
    cache = KVCache(llm.model)
    cache.ensure(1, len(ids))
    with torch.inference_mode():
        ours = llm.model(tokens, 0, cache=cache)
        reference = hf_model(tokens).logits
    assert (ours - reference).abs().max().item() <= 1e-3


def test_greedy_32_tokens_match_transformers(llm, hf_model) -> None:  # type: ignore[no-untyped-def]
    ids = llm.tokenizer.encode("The capital of France is")
    with torch.inference_mode():
        reference = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, min_new_tokens=32)[0, len(ids) :].tolist()
    generation = llm.stream(ids, max_tokens=32, temperature=0, ignore_eos=True)
    ours = [event.id for event in generation]
    assert ours == reference
    assert generation.results[0].stop_reason == "length"


def test_cli_greedy_continuation_is_the_reference_text(default_model_path, hf_model, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    prompt = "The capital of France is"
    ids = hf_tokenizer(prompt)["input_ids"]
    with torch.inference_mode():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids) :]
    expected = hf_tokenizer.decode(out, skip_special_tokens=True)
    result = subprocess.run(
        [sys.executable, "-m", "llama_cli", "generate", "-t", "0", "--dtype", "float32", "-n", "16", prompt],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected
    assert result.stdout.startswith(" Paris")
