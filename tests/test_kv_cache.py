"""The KV cache owner on a tiny random model: what each row holds is known exactly, growing keeps it,
rows copy, reuse picks the longest prefix, and a write never leaves a gap or a stale record."""

from __future__ import annotations

import pytest
import torch

from llama_cli.config import ModelConfig
from llama_cli.kv_cache import KVCache, common_prefix
from llama_cli.model import Transformer


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, ffn_dim=128, rope_theta=10000.0, context_length=64)
    model = Transformer(config).to(torch.float64).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


def test_run_records_what_each_row_holds(model: Transformer) -> None:
    cache = KVCache(model)
    cache.ensure(2, 16)
    with torch.inference_mode():
        cache.run([[5, 6, 7], [8, 9, 10]])
        cache.run([[11], [12]], 3)
        cache.run([[13, 14]], 2, rows=[1])  # row 1 rewritten from position 2: what followed is forgotten
        cache.run([[15], [16]], rows=[0, 1], positions=[4, 4])
    assert cache.held == [[5, 6, 7, 11, 15], [8, 9, 13, 14, 16]]
    with pytest.raises(ValueError, match="row 0 holds 5 positions; cannot write at position 6"):
        cache.run([[1]], 6)  # a gap: the cache never guesses what positions 5 held


def test_reusable_leaves_one_token_to_run(model: Transformer) -> None:
    cache = KVCache(model)
    assert cache.reusable(0, [1, 2, 3]) == 0  # nothing allocated yet
    cache.ensure(1, 16)
    with torch.inference_mode():
        cache.run([[1, 2, 3, 4]])
    assert cache.reusable(0, [1, 2, 3, 9]) == 3
    assert cache.reusable(0, [1, 2, 3, 4]) == 3  # the last prompt token must run: its logits are needed
    assert cache.reusable(0, [7]) == 0


def test_growing_keeps_every_row_and_its_logits(model: Transformer) -> None:
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    fresh = KVCache(model)
    fresh.ensure(1, 32)
    grown = KVCache(model)
    grown.ensure(2, 8)
    with torch.inference_mode():
        expected = fresh.run([ids + [5, 3]])[0, -2:]
        grown.run([ids[:6]])
        grown.run([[7, 7]], rows=[1])
        grown.ensure(2, 32)  # bigger: rows 0 and 1 keep their tokens and keys
        assert grown.held == [ids[:6], [7, 7]] and grown.length == 32
        got = grown.run([ids[6:] + [5, 3]], 6)[0, -2:]
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-9)


def test_copy_row_shares_one_prefill(model: Transformer) -> None:
    cache = KVCache(model)
    cache.ensure(3, 16)
    with torch.inference_mode():
        cache.run([[1, 2, 3, 4]])
        cache.copy_row(0, [1, 2], 3)
        assert cache.held == [[1, 2, 3, 4], [1, 2, 3], [1, 2, 3]]
        steps = cache.run([[4], [4], [9]], 3)[:, -1]
    torch.testing.assert_close(steps[0], steps[1], atol=0, rtol=0)
    with pytest.raises(ValueError, match="holds 4 positions, not 5"):
        cache.copy_row(0, [1], 5)


def test_acquire_prefers_the_longest_prefix_then_the_least_recently_used(model: Transformer) -> None:
    cache = KVCache(model)
    cache.ensure(3, 16)
    with torch.inference_mode():
        for row, ids in enumerate([[1, 2, 3], [1, 2, 5, 6], [9]]):
            cache.run([ids], rows=[row])
    assert cache.acquire([1, 2, 5, 6, 7]) == (1, 4)
    assert cache.free == 2
    assert cache.acquire([1, 2, 5, 8]) == (0, 3)  # row 0 shares [1, 2]; busy row 1's [1, 2, 5] is copied in
    assert cache.held[0] == [1, 2, 5] and cache.held[1] == [1, 2, 5, 6]
    cache.release(1)
    cache.release(0)
    assert cache.acquire([4]) == (2, 0)  # no prefix anywhere: row 2 was released longest ago (never)
    assert cache.acquire([4]) == (1, 0)  # then row 1, released before row 0
    cache.acquire([4])
    with pytest.raises(RuntimeError, match="no free KV-cache row"):
        cache.acquire([4])


def test_a_prefix_copied_from_a_busy_row_gives_a_fresh_prefills_logits(model: Transformer) -> None:
    cache, fresh = KVCache(model), KVCache(model)
    cache.ensure(2, 16)
    fresh.ensure(1, 16)
    prompt = [3, 1, 4, 1, 5, 9, 2]
    with torch.inference_mode():
        row, _ = cache.acquire(prompt[:5] + [7])
        cache.run([prompt[:5] + [7]], rows=[row])  # a first request, still running
        other, reused = cache.acquire(prompt)
        assert (other, reused) == (1 - row, 5)
        copied = cache.run([prompt[5:]], 5, rows=[other])
        expected = fresh.run([prompt])[:, 5:]
    torch.testing.assert_close(copied, expected, rtol=0, atol=0)


def test_an_interrupted_pass_leaves_only_valid_entries(model: Transformer, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = KVCache(model)
    cache.ensure(1, 16)
    with torch.inference_mode():
        cache.run([[1, 2, 3, 4, 5]])

        def interrupted(*args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(model, "forward", interrupted)
        with pytest.raises(KeyboardInterrupt):
            cache.run([[6, 7]], 3)
    assert cache.held == [[1, 2, 3]]  # positions 3.. may hold half-written keys: forgotten before the pass


def test_the_cache_free_mode_is_explicit(model: Transformer) -> None:
    tokens = torch.tensor([[1, 2, 3]])
    with pytest.raises(TypeError, match="cache"):
        model(tokens)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="need a KV cache"):
        model(tokens, 2, cache=None)
