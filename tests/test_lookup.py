"""Prompt-lookup decoding: the draft index, and the same output as plain decoding (tiny and real models)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from llama_cli.config import ModelConfig
from llama_cli.errors import UsageError
from llama_cli.generation import Generation, GenerationSettings
from llama_cli.lookup import NgramIndex
from llama_cli.model import Transformer
from llama_cli.sampling import SamplingSettings
from llama_cli.tokenizer import SpecialTokens, Tokenizer

DOCS = Path(__file__).parent / "data" / "presets"


class CharTokenizer(Tokenizer):
    """One token per printable ASCII character (id = code - 32); id 95 stands for end-of-sequence."""

    special = SpecialTokens(bos_id=None, eos_id=95, stop_ids=frozenset({95}), add_bos=False)
    vocab_size = 96  # type: ignore[assignment]

    def encode(self, text: str, *, bos: bool | None = None, parse_special: bool = False) -> list[int]:
        return [ord(c) - 32 for c in text]

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        return "".join(chr(i + 32) for i in ids if i != 95)

    def piece(self, token_id: int) -> str:
        return chr(token_id + 32)

    def is_special(self, token_id: int) -> bool:
        return token_id == 95

    def save(self, folder: Path) -> None:
        raise NotImplementedError


def tiny_model(seed: int) -> Transformer:
    config = ModelConfig(dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, ffn_dim=96, context_length=256)
    torch.manual_seed(seed)
    model = Transformer(config).to(torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def run(model: Transformer, tokenizer: Tokenizer, prompt: Sequence[int], **options: object) -> Generation:
    sampling = SamplingSettings(**{k: options.pop(k) for k in list(options) if k in SamplingSettings.__dataclass_fields__})  # type: ignore[arg-type]
    generation = Generation(model, tokenizer, prompt, GenerationSettings(sampling=sampling, **options))  # type: ignore[arg-type]
    list(generation)
    return generation


def test_index_drafts_what_followed_the_longest_match() -> None:
    index = NgramIndex([1, 2, 3, 4, 5, 9, 2, 3, 7, 8])
    index.append(2)
    index.append(3)  # ... 2 3: last seen followed by 7 8
    assert index.draft(3) == [7, 8, 2]
    index.append(4)  # 2 3 4 occurred once, followed by 5 9
    assert index.draft(2) == [5, 9]
    assert index.draft(0) == []
    assert NgramIndex([1, 2, 3]).draft(4) == []  # the last bigram never occurred before
    assert NgramIndex([5, 5, 5]).draft(4) == [5]  # overlapping match: only what exists so far


def test_index_ignores_single_token_matches() -> None:
    index = NgramIndex([1, 2, 3, 1])
    assert index.draft(2) == []  # only the unigram "1" matches


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_lookup_equals_plain_on_a_tiny_model(seed: int) -> None:
    model, tokenizer = tiny_model(seed), CharTokenizer()
    prompt = tokenizer.encode("abcabcabc the cat sat on the mat; the cat sat on the mat; the cat")
    plain = run(model, tokenizer, prompt, max_tokens=60, temperature=0, seed=0)
    fast = run(model, tokenizer, prompt, max_tokens=60, temperature=0, seed=0, lookup=5)
    assert fast.results[0].token_ids == plain.results[0].token_ids
    assert fast.text == plain.text and fast.results[0].stop_reason == plain.results[0].stop_reason
    assert fast.stats.drafted_tokens > 0 and 0 < fast.stats.accepted_tokens <= fast.stats.drafted_tokens


@pytest.mark.parametrize("top_k", [0, 5])  # the whole vocabulary; the k survivors
def test_sampled_lookup_equals_plain_with_the_same_seed(top_k: int) -> None:
    """Tokens are drawn one by one from the same distributions with the same generator calls."""
    model, tokenizer = tiny_model(3), CharTokenizer()
    prompt = tokenizer.encode("one two one two one two one two")
    options = {"max_tokens": 50, "temperature": 0.7, "top_k": top_k, "top_p": 1.0, "min_p": 0.0, "seed": 11, "repetition_penalty": 1.1}
    plain = run(model, tokenizer, prompt, **options)
    fast = run(model, tokenizer, prompt, **options, lookup=4)
    assert fast.results[0].token_ids == plain.results[0].token_ids


def test_lookup_respects_max_tokens_stop_strings_and_the_cache_size() -> None:
    model, tokenizer = tiny_model(0), CharTokenizer()
    prompt = tokenizer.encode("the cat sat on the mat; the cat sat on the mat; the cat")
    for options in [{"max_tokens": 7}, {"max_tokens": 40, "stop": ("at",)}, {"max_tokens": 256 - len(prompt), "ignore_eos": True}]:
        plain = run(model, tokenizer, prompt, temperature=0, **options)
        fast = run(model, tokenizer, prompt, temperature=0, lookup=8, **options)
        assert fast.text == plain.text and fast.results[0].token_ids == plain.results[0].token_ids, options
        assert fast.results[0].stop_reason == plain.results[0].stop_reason


def test_lookup_settings_are_checked() -> None:
    with pytest.raises(UsageError, match="lookup must be"):
        GenerationSettings(lookup=-1)
    with pytest.raises(UsageError, match="one sample"):
        GenerationSettings(lookup=4, samples=2)


@pytest.mark.real_model
@pytest.mark.parametrize(("name", "weights"), [("eiffel.txt", "float32"), ("report.txt", "fast"), ("library.txt", "fast")])
def test_greedy_lookup_equals_plain_on_the_default_model(request: pytest.FixtureRequest, weights: str, name: str) -> None:
    """Summaries of real documents copy phrases, so drafts are accepted; the text must not change.
    Each document once, both paths (float32 on the shortest: it decodes slowest), a bulleted summary."""
    from llama_cli.presets.recipes import SUMMARIZE, summary_fields

    llm = request.getfixturevalue("llm" if weights == "float32" else "fast_llm")
    ids = llm.encode_chat(SUMMARIZE.messages(text=(DOCS / name).read_text(), **summary_fields(bullets=name == "library.txt")))
    settings = GenerationSettings(max_tokens=64, sampling=SamplingSettings(temperature=0))
    plain = Generation(llm.model, llm.tokenizer, ids, settings)
    fast = Generation(llm.model, llm.tokenizer, ids, dataclasses.replace(settings, lookup=8))
    list(plain), list(fast)
    assert fast.results[0].token_ids == plain.results[0].token_ids
    assert fast.text == plain.text and fast.results[0].stop_reason == plain.results[0].stop_reason
    assert fast.stats.accepted_tokens > 0
