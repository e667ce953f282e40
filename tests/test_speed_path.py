"""The CPU fast path (quantize.py, fastpath.py) against the float32 reference: no timings here.

- GGUF blocks are repacked, not re-quantized: the codes decode to exactly what gguf dequantizes.
- The fast model's logits stay within a stated tolerance of float32 (bfloat16 activations), and
  greedy output is identical where the README claims it.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType as Q
from test_weights import random_weights, write_gguf

from llama_cli import load
from llama_cli.config import ModelConfig
from llama_cli.fastpath import FastTransformer
from llama_cli.perplexity import perplexity
from llama_cli.quantize import int4_linear, pack, read_blocks
from llama_cli.weights.gguf_header import scan_header

PROMPTS = [  # tests/test_fidelity.py's prompts
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "The quick brown fox jumps over the lazy dog",
    "Once upon a time, in a land far away, there lived a",
]
# bfloat16 keeps 8 bits of mantissa; over 30 layers the logits drift by a few tenths at most.
TOP_TOLERANCE = 0.35  # the float32 top-10 tokens' logits
ALL_TOLERANCE = 1.0  # every logit


@pytest.fixture(scope="session")
def fast(default_model_path: Path):  # type: ignore[no-untyped-def]
    llm = load(default_model_path)  # dtype "auto": the fast path on the CPU
    assert llm.fast and isinstance(llm.model, FastTransformer)
    return llm


@pytest.mark.parametrize("kind", [Q.Q4_0, Q.Q4_1, Q.Q8_0])
def test_blocks_decode_exactly_as_gguf_dequantizes(tmp_path: Path, kind: Q) -> None:
    rng = np.random.default_rng(int(kind))
    weights = (rng.standard_normal((64, 96)) * rng.uniform(0.01, 2, size=(64, 1))).astype(np.float32)
    weights[3, :32] = 0.25  # a constant block (scale 0)
    raw = gguf.quants.quantize(weights, kind)
    path = tmp_path / "raw.bin"
    path.write_bytes(b"\0" * 7 + raw.tobytes())  # an odd offset, as inside a GGUF
    blocks = read_blocks(path, 7, raw.nbytes, kind.name, (64, 96))
    expected = gguf.quants.dequantize(raw, kind).reshape(64, 96)
    assert blocks.doubled == (kind == Q.Q8_0)
    assert torch.equal(blocks.dense(), torch.from_numpy(expected))


def test_default_model_tensors_decode_exactly(default_model_path: Path) -> None:
    header = scan_header(default_model_path)
    reader = gguf.GGUFReader(default_model_path)
    data = {t.name: t.data for t in reader.tensors}
    for name in ("blk.0.attn_q.weight", "blk.29.ffn_down.weight", "token_embd.weight"):  # Q4_1, Q4_1, Q8_0
        info = header.tensors[name]
        blocks = read_blocks(default_model_path, info.offset, info.n_bytes, info.type.name, info.shape)
        expected = torch.from_numpy(gguf.quants.dequantize(data[name], info.type).reshape(info.shape))
        assert torch.equal(blocks.dense(), expected), name


@pytest.mark.parametrize("kind", [Q.Q4_1, Q.Q8_0])
def test_int4_kernel_matches_the_float32_product(tmp_path: Path, kind: Q) -> None:
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((128, 256)).astype(np.float32)
    raw = gguf.quants.quantize(weights, kind)
    path = tmp_path / "raw.bin"
    path.write_bytes(raw.tobytes())
    blocks = read_blocks(path, 0, raw.nbytes, kind.name, (128, 256))
    x = torch.from_numpy(rng.standard_normal((3, 256)).astype(np.float32))
    reference = x @ blocks.dense().T
    ours = int4_linear(x.to(torch.bfloat16), *pack(blocks), doubled=blocks.doubled).float()
    assert ((ours - reference).norm() / reference.norm()).item() < 0.01  # bfloat16 input, output, block constants


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_within_tolerance_of_float32(llm, fast, prompt: str) -> None:  # type: ignore[no-untyped-def]
    ids = torch.tensor([llm.tokenizer.encode(prompt)])
    with torch.inference_mode():
        llm.model.setup_cache(1, ids.shape[1])
        fast.model.setup_cache(1, ids.shape[1])
        reference = llm.model(ids, 0)[0]  # (T, vocab), every position
        decode = fast.model(ids, 0, last_only=True)[0, -1]  # the head of generation (int4, then exact near the top)
        full = fast.model(ids, 0)[0]  # the head of perplexity (float32)
    top = reference[-1].topk(10).indices
    assert (decode[top] - reference[-1, top]).abs().max().item() < TOP_TOLERANCE
    assert (decode - reference[-1]).abs().max().item() < ALL_TOLERANCE
    assert (full - reference).abs().max().item() < ALL_TOLERANCE


def test_greedy_output_is_identical_where_claimed(llm, fast) -> None:  # type: ignore[no-untyped-def]
    # The README's example: the fast path gives float32's greedy text for this prompt.
    ids = llm.tokenizer.encode("The capital of France is")
    reference = [e.id for e in llm.stream(ids, max_tokens=32, temperature=0, ignore_eos=True)]
    ours = [e.id for e in fast.stream(ids, max_tokens=32, temperature=0, ignore_eos=True)]
    assert ours == reference
    assert fast.generate("What is the capital of France?", chat=True, temperature=0, max_tokens=20) == "The capital of France is Paris."


def test_kv_cache_holds_what_the_reference_writes(llm, fast) -> None:  # type: ignore[no-untyped-def]
    # chat.py reuses and copies the cache: it must have the reference's layout (rotate-half keys).
    ids = torch.tensor([llm.tokenizer.encode(PROMPTS[3])])
    with torch.inference_mode():
        llm.model.setup_cache(1, ids.shape[1])
        fast.model.setup_cache(1, ids.shape[1])
        llm.model(ids, 0)
        fast.model(ids, 0)
    for layer in (0, 29):
        ref_cache, fast_cache = llm.model.layers[layer].attention.kv_cache, fast.model.layers[layer].attention.kv_cache
        assert fast_cache.k.dtype == torch.float32
        scale = ref_cache.k.abs().max().item()
        assert (fast_cache.k - ref_cache.k).abs().max().item() < 0.05 * scale
        assert (fast_cache.v - ref_cache.v).abs().max().item() < 0.05 * ref_cache.v.abs().max().item()


def test_decode_steps_agree_with_one_pass(fast) -> None:  # type: ignore[no-untyped-def]
    # Token-by-token (int4 kernel) and a single pass over the prompt (dense bfloat16) agree closely.
    ids = fast.tokenizer.encode(PROMPTS[2])
    with torch.inference_mode():
        fast.model.setup_cache(1, len(ids))
        whole = fast.model(torch.tensor([ids]), 0, last_only=True)[0, -1]
        fast.model.setup_cache(1, len(ids))
        for position, token in enumerate(ids):
            steps = fast.model(torch.tensor([[token]]), position, last_only=True)[0, -1]
    top = whole.topk(10).indices
    assert (steps[top] - whole[top]).abs().max().item() < TOP_TOLERANCE


def test_batched_samples_equal_single_runs(fast) -> None:  # type: ignore[no-untyped-def]
    ids = fast.tokenizer.encode("My favourite food is")
    batch = fast.stream(ids, max_tokens=12, temperature=1.0, seed=5, samples=2)
    for _ in batch:
        pass
    for i, result in enumerate(batch.results):
        assert fast.generate(ids, max_tokens=12, temperature=1.0, seed=5 + i) == result.text


def test_packed_weights_are_cached_and_read_back(fast, default_model_path: Path) -> None:  # type: ignore[no-untyped-def]
    from llama_cli.fastpath import _cache_file

    cached = _cache_file(default_model_path)
    assert cached is not None and cached.is_file()  # written by the first load
    again = load(default_model_path)  # packs nothing: memory-maps that file
    ids = torch.tensor([fast.tokenizer.encode(PROMPTS[0])])
    with torch.inference_mode():
        fast.model.setup_cache(1, ids.shape[1])
        again.model.setup_cache(1, ids.shape[1])
        assert torch.equal(fast.model(ids, 0, last_only=True), again.model(ids, 0, last_only=True))


def test_perplexity_close_to_float32(llm, fast) -> None:  # type: ignore[no-untyped-def]
    ids = llm.tokenizer.encode(" ".join(PROMPTS) * 8)
    reference = perplexity(llm.model, ids, 64).perplexity
    ours = perplexity(fast.model, ids, 64).perplexity
    assert abs(ours - reference) / reference < 0.02


# ---------------------------------------------------------------- other block types, on a tiny GGUF

TINY_FAST = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=320, ffn_dim=128, rope_theta=10000.0, context_length=64)


@pytest.mark.parametrize(
    ("qtype", "override", "layers_doubled", "head"),
    [
        (Q.Q4_0, {}, False, "int4"),  # every 2-D tensor Q4_0
        (Q.Q8_0, {}, True, "int4"),  # 8-bit: the doubled form
        (Q.Q4_1, {"layers.1.attention.wv.weight": Q.Q8_0, "output.weight": Q.F16}, True, "dense"),  # mixed; an unpackable head
    ],
)
def test_tiny_gguf_of_each_kind_runs_close_to_float32(tmp_path: Path, qtype: Q, override: dict, layers_doubled: bool, head: str) -> None:  # type: ignore[type-arg]
    weights = random_weights(TINY_FAST, seed=3)
    raw = {}
    for name, kind in override.items():
        tensor = weights[name]
        raw[name] = (tensor.numpy().astype(np.float16), kind) if kind == Q.F16 else (gguf.quants.quantize(tensor.numpy(), kind), kind)
    path = write_gguf(tmp_path / "tiny.gguf", TINY_FAST, weights, qtype=qtype, raw=raw)
    reference, fast = load(path, dtype="float32"), load(path)
    assert fast.fast and fast.model.layers_doubled == layers_doubled
    assert len(fast.model.fast_head) == (2 if head == "int4" else 1)
    tokens = torch.randint(3, 300, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference.model.setup_cache(1, 32)
        fast.model.setup_cache(1, 32)
        expected = reference.model(tokens, 0)[0]  # (T, vocab)
        prompt = fast.model(tokens, 0)[0]  # 24 rows: the dense bfloat16 copy, float32 head for every position
        fast.model.setup_cache(1, 32)
        steps = torch.cat([fast.model(tokens[:, i : i + 1], i, last_only=True)[0] for i in range(tokens.shape[1])])  # decode, int4 head
    scale = expected.abs().max().item()
    assert (prompt - expected).abs().max().item() < 0.03 * scale
    assert (steps - expected).abs().max().item() < 0.03 * scale  # (random weights have near-ties: argmax is not compared)
