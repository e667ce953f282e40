"""The quantized path (quantized.py over kernels/) against the float32 reference: no timings here.

- Weights stay in the file's blocks: the model holds QuantizedLinear modules over those bytes.
- Logits stay within a stated tolerance of float32 (activations are rounded to int8 inside each
  matmul, as llama.cpp does), and greedy output is identical where the README claims it.
- Every tensor type a llama.cpp preset writes runs, on a tiny GGUF, close to float32.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType as Q
from test_weights import random_weights, write_gguf

from llama_cli import kernels, load
from llama_cli.config import ModelConfig
from llama_cli.kv_cache import KVCache
from llama_cli.perplexity import perplexity
from llama_cli.quantized import QuantizedEmbedding, QuantizedLinear

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"the C kernels are not available here: {kernels.describe()}")

PROMPTS = [  # tests/test_fidelity.py's prompts
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "The quick brown fox jumps over the lazy dog",
    "Once upon a time, in a land far away, there lived a",
]
# Activations are rounded to int8 (per block of 32 or 256) inside each matmul, as in llama.cpp; over
# 30 layers the log-probabilities drift by a few tenths (measured: 0.27-0.40 on the top 10; up to 1.7
# far down the tail, at log-probabilities below -15, where nothing is ever sampled).
TOP_TOLERANCE = 0.5  # the float32 top-10 tokens' log-probabilities
ALL_TOLERANCE = 2.5  # every log-probability


@pytest.fixture(scope="session")
def fast(default_model_path: Path):  # type: ignore[no-untyped-def]
    llm = load(default_model_path)  # dtype "auto": the quantized path on the CPU
    assert llm.fast and isinstance(llm.model.layers[0].attention.wqkv, QuantizedLinear)  # wq, wk, wv stacked: all Q4_1
    assert isinstance(llm.model.tok_embeddings, QuantizedEmbedding) and isinstance(llm.model.output, QuantizedLinear)  # tied head
    return llm


@pytest.mark.real_model
@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_within_tolerance_of_float32(llm, fast, prompt: str) -> None:  # type: ignore[no-untyped-def]
    ids = torch.tensor([llm.tokenizer.encode(prompt)])
    with torch.inference_mode():
        ref_cache, fast_cache = KVCache(llm.model), KVCache(fast.model)
        ref_cache.ensure(1, ids.shape[1])
        fast_cache.ensure(1, ids.shape[1])
        reference = llm.model(ids, 0, cache=ref_cache)[0]  # (T, vocab), every position
        decode = fast.model(ids, 0, cache=fast_cache, last_only=True)[0, -1]  # the head of generation
        full = fast.model(ids, 0, cache=fast_cache)[0]  # every position (perplexity)
    # Compared as log-probabilities: a shift of every logit by the same amount changes nothing.
    decode, full, reference = decode.log_softmax(-1), full.log_softmax(-1), reference.log_softmax(-1)
    top = reference[-1].topk(10).indices
    assert (decode[top] - reference[-1, top]).abs().max().item() < TOP_TOLERANCE
    assert (decode - reference[-1]).abs().max().item() < ALL_TOLERANCE
    assert (full - reference).abs().max().item() < ALL_TOLERANCE


@pytest.mark.real_model
def test_greedy_output_is_identical_where_claimed(llm, fast) -> None:  # type: ignore[no-untyped-def]
    # The README's examples: the quantized path gives float32's greedy text for these prompts (the
    # first tokens of a completion; after a near-tie the two may part, as llama.cpp's would).
    ids = llm.tokenizer.encode("The capital of France is")
    reference = [e.id for e in llm.stream(ids, max_tokens=5, temperature=0, ignore_eos=True)]
    ours = [e.id for e in fast.stream(ids, max_tokens=5, temperature=0, ignore_eos=True)]
    assert ours == reference
    assert fast.generate("What is the capital of France?", chat=True, temperature=0, max_tokens=20) == "The capital of France is Paris."


@pytest.mark.real_model
def test_kv_cache_holds_what_the_reference_writes(llm, fast) -> None:  # type: ignore[no-untyped-def]
    # chat.py reuses and copies the cache: it must have the reference's layout (rotate-half keys).
    ids = torch.tensor([llm.tokenizer.encode(PROMPTS[3])])
    with torch.inference_mode():
        ref_caches, fast_caches = KVCache(llm.model), KVCache(fast.model)
        ref_caches.ensure(1, ids.shape[1])
        fast_caches.ensure(1, ids.shape[1])
        llm.model(ids, 0, cache=ref_caches)
        fast.model(ids, 0, cache=fast_caches)
    for layer in (0, 29):
        ref_cache, fast_cache = ref_caches.layers[layer], fast_caches.layers[layer]
        assert fast_cache.k.dtype == torch.float32
        scale = ref_cache.k.abs().max().item()
        assert (fast_cache.k - ref_cache.k).abs().max().item() < 0.1 * scale
        assert (fast_cache.v - ref_cache.v).abs().max().item() < 0.1 * ref_cache.v.abs().max().item()


def test_decode_steps_agree_with_one_pass(fast) -> None:  # type: ignore[no-untyped-def]
    # Token-by-token (matrix-vector) and a single pass over the prompt (matrix-matrix) agree closely.
    ids = fast.tokenizer.encode(PROMPTS[2])
    with torch.inference_mode():
        cache = KVCache(fast.model)
        cache.ensure(1, len(ids))
        whole = fast.model(torch.tensor([ids]), 0, cache=cache, last_only=True)[0, -1]
        for position, token in enumerate(ids):
            steps = fast.model(torch.tensor([[token]]), position, cache=cache, last_only=True)[0, -1]
    top = whole.topk(10).indices
    assert (steps[top] - whole[top]).abs().max().item() < TOP_TOLERANCE


def test_batched_samples_equal_single_runs(fast) -> None:  # type: ignore[no-untyped-def]
    ids = fast.tokenizer.encode("My favourite food is")
    batch = fast.stream(ids, max_tokens=12, temperature=1.0, seed=5, samples=2)
    for _ in batch:
        pass
    for i, result in enumerate(batch.results):
        assert fast.generate(ids, max_tokens=12, temperature=1.0, seed=5 + i) == result.text


@pytest.mark.real_model
def test_perplexity_close_to_float32(llm, fast) -> None:  # type: ignore[no-untyped-def]
    ids = llm.tokenizer.encode(" ".join(PROMPTS) * 8)
    reference = perplexity(llm.model, ids, 64).perplexity
    ours = perplexity(fast.model, ids, 64).perplexity
    assert abs(ours - reference) / reference < 0.02


# ---------------------------------------------------------------- every block type, on a tiny GGUF

# Rows of 256 so the K-quants fit; two layers, a separate head.
TINY_Q = ModelConfig(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=320, ffn_dim=512, rope_theta=10000.0, context_length=64)
ALL_TYPES = [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_NL, Q.IQ4_XS]
# Error of the whole model's logits relative to their largest, by bits per weight: the types differ
# from float32 by their own rounding (the reference dequantizes the same blocks), and int8 activations.
TOLERANCE = 0.15  # measured 0.04-0.09 (Q5_1) with int8 activations on these random weights; a wrong kernel gives ~1
# Byte offsets of each block's float16 scales (llama.cpp's ggml-common.h), for types gguf cannot write,
# and a scale that gives weights of a sensible size (|w| ~ 0.05: random blocks use every code and sub-scale).
FP16_FIELDS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,), Q.IQ4_NL: (0,), Q.IQ4_XS: (0,)}
SCALE = {Q.Q2_K: 2e-3, Q.Q3_K: 2e-4, Q.Q4_K: 1e-4, Q.Q5_K: 5e-5, Q.Q6_K: 2e-5, Q.IQ4_NL: 3e-4, Q.IQ4_XS: 1e-5}


def quantize_for_test(tensor: torch.Tensor, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """The tensor in `qtype`'s blocks; where the gguf package cannot quantize to it, random blocks
    (every bit pattern is valid) with small float16 scales: the test compares against their dequantization."""
    if qtype == Q.F16:
        return tensor.numpy().astype(np.float16)
    if qtype not in FP16_FIELDS:
        return gguf.quants.quantize(tensor.numpy(), qtype)
    rows, cols = tensor.shape
    block, size = gguf.constants.GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    for offset in FP16_FIELDS[qtype]:
        scales = rng.uniform(0.5 * SCALE[qtype], 1.5 * SCALE[qtype], size=(rows, cols // block)).astype(np.float16)
        data[:, :, offset : offset + 2] = scales.view(np.uint8).reshape(rows, cols // block, 2)
    return data.reshape(rows, cols // block * size)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda q: q.name)
def test_tiny_gguf_of_each_type_runs_close_to_float32(tmp_path: Path, qtype: Q) -> None:
    weights = random_weights(TINY_Q, seed=3)
    rng = np.random.default_rng(0)
    raw = {name: (quantize_for_test(t, qtype, rng), qtype) for name, t in weights.items() if t.dim() == 2}
    path = write_gguf(tmp_path / "tiny.gguf", TINY_Q, weights, raw=raw)
    reference, fast = load(path, dtype="float32"), load(path)
    assert fast.fast and fast.model.layers[1].feed_forward.w2.qtype == qtype.name
    tokens = torch.randint(3, 300, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref_cache, cache = KVCache(reference.model), KVCache(fast.model)
        ref_cache.ensure(1, 32)
        cache.ensure(1, 32)
        expected = reference.model(tokens, 0, cache=ref_cache)[0]  # (T, vocab)
        prompt = fast.model(tokens, 0, cache=cache)[0]  # 24 rows at once
        # one row at a time:
        steps = torch.cat([fast.model(tokens[:, i : i + 1], i, cache=cache, last_only=True)[0] for i in range(tokens.shape[1])])
    scale = expected.abs().max().item()
    assert (prompt - expected).abs().max().item() < TOLERANCE * scale
    assert (steps - expected).abs().max().item() < TOLERANCE * scale  # (random weights have near-ties: argmax is not compared)
