"""Samplers against hand-computed distributions on small logits."""

from __future__ import annotations

import math

import pytest
import torch

from llama_cli.errors import UsageError
from llama_cli.sampling import (
    SamplingSettings,
    apply_penalties,
    min_p_filter,
    sample,
    sample_rows,
    sampling_distribution,
    top_k_filter,
    top_p_filter,
)

# probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625 as logits
PROBS = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625])
LOGITS = PROBS.log()


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits).nonzero().flatten().tolist()


def test_top_k_keeps_k_best() -> None:
    assert kept(top_k_filter(LOGITS, 2)) == [0, 1]
    assert kept(top_k_filter(LOGITS, 0)) == [0, 1, 2, 3, 4]


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    assert kept(top_p_filter(LOGITS, 0.5)) == [0]  # 0.5 alone reaches 0.5
    assert kept(top_p_filter(LOGITS, 0.6)) == [0, 1]
    assert kept(top_p_filter(LOGITS, 0.8)) == [0, 1, 2]
    assert kept(top_p_filter(LOGITS, 1.0)) == [0, 1, 2, 3, 4]
    assert kept(top_p_filter(LOGITS, 0.01)) == [0]  # the best token always stays


def test_min_p_relative_to_best() -> None:
    assert kept(min_p_filter(LOGITS, 0.25)) == [0, 1, 2]  # threshold 0.125
    assert kept(min_p_filter(LOGITS, 0.6)) == [0]


def test_distribution_renormalises_hand_computed() -> None:
    s = SamplingSettings(temperature=1.0, top_k=3, top_p=1.0, min_p=0.0)
    probs = sampling_distribution(LOGITS, s)
    torch.testing.assert_close(probs, torch.tensor([4 / 7, 2 / 7, 1 / 7, 0.0, 0.0]))


def test_temperature_sharpens() -> None:
    s = SamplingSettings(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0)
    expected = PROBS**2 / (PROBS**2).sum()
    torch.testing.assert_close(sampling_distribution(LOGITS, s), expected)


def test_penalties_hand_computed() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, 1.0])
    counts = torch.tensor([2, 1, 0, 0])
    rep = apply_penalties(logits, counts, SamplingSettings(repetition_penalty=2.0))
    torch.testing.assert_close(rep, torch.tensor([1.0, -2.0, 0.5, 1.0]))
    freq = apply_penalties(logits, counts, SamplingSettings(frequency_penalty=0.5, presence_penalty=0.25))
    torch.testing.assert_close(freq, torch.tensor([2.0 - 1.0 - 0.25, -1.0 - 0.5 - 0.25, 0.5, 1.0]))


def test_greedy_is_argmax_and_ignores_generator() -> None:
    s = SamplingSettings(temperature=0)
    assert sample(LOGITS, s, None) == 0
    assert sample(torch.tensor([0.0, 3.0, 1.0]), s, torch.Generator().manual_seed(5)) == 1


def test_penalties_can_change_the_greedy_choice() -> None:
    s = SamplingSettings(temperature=0, presence_penalty=1.0)
    assert sample(torch.tensor([1.0, 0.5]), s, None, counts=torch.tensor([1, 0])) == 1


@pytest.mark.parametrize("settings,allowed", [
    (SamplingSettings(temperature=1.0, top_p=0.8, top_k=0, min_p=0.0), {0, 1, 2}),
    (SamplingSettings(temperature=1.0, min_p=0.25, top_k=0, top_p=1.0), {0, 1, 2}),
    (SamplingSettings(temperature=1.5, top_k=2, top_p=1.0, min_p=0.0), {0, 1}),
    (SamplingSettings(temperature=1.0, top_k=4, top_p=0.85, min_p=0.0), {0, 1, 2}),  # top-p over the k survivors
    (SamplingSettings(temperature=0.7, top_k=4, top_p=1.0, min_p=0.1), {0, 1, 2}),  # min-p over the k survivors
])  # fmt: skip
def test_sampling_never_leaves_the_allowed_set(settings: SamplingSettings, allowed: set[int]) -> None:
    generator = torch.Generator().manual_seed(0)
    draws = [sample(LOGITS, settings, generator) for _ in range(3000)]
    assert set(draws) == allowed  # every allowed token shows up, nothing else does
    expected = sampling_distribution(LOGITS, settings)
    for token in allowed:  # frequencies follow the hand-computed distribution
        freq = draws.count(token) / len(draws)
        assert abs(freq - float(expected[token])) < 4 * math.sqrt(float(expected[token]) / len(draws)) + 0.01


def test_same_seed_same_draws() -> None:
    s = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = [sample(LOGITS, s, g) for g in [torch.Generator().manual_seed(7)] for _ in range(50)]
    b = [sample(LOGITS, s, g) for g in [torch.Generator().manual_seed(7)] for _ in range(50)]
    c = [sample(LOGITS, s, g) for g in [torch.Generator().manual_seed(8)] for _ in range(50)]
    assert a == b and a != c


ROWS = torch.randn(6, 300, generator=torch.Generator().manual_seed(0)) * 3  # (rows, vocab)


@pytest.mark.parametrize("settings", [
    SamplingSettings(),  # top-k 40: the survivors' path
    SamplingSettings(temperature=1.2, top_k=5, top_p=0.6, min_p=0.1, presence_penalty=0.5, repetition_penalty=1.3),
    SamplingSettings(top_k=0),  # the whole vocabulary
    SamplingSettings(temperature=0, frequency_penalty=0.4),
])  # fmt: skip
def test_rows_sampled_together_equal_rows_sampled_alone(settings: SamplingSettings) -> None:
    """What lets a server's batch, `--samples` and a lone request give the same tokens: a row's draw
    depends on its logits and its own generator, not on the rows beside it."""
    counts = (ROWS > 2.5).to(torch.int32)
    together_gens = [torch.Generator().manual_seed(i) for i in range(len(ROWS))]
    alone_gens = [torch.Generator().manual_seed(i) for i in range(len(ROWS))]
    steps = []
    for _ in range(20):
        together = sample_rows(ROWS, settings, together_gens, counts)
        assert together == [sample(row, settings, g, c) for row, g, c in zip(ROWS, alone_gens, counts)]
        steps.append(tuple(together))
    assert len(set(steps)) == 1 if settings.greedy else len(set(steps)) > 1  # sampled draws do move


@pytest.mark.parametrize(
    "kwargs", [{"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}, {"min_p": 2.0}, {"repetition_penalty": 0.0}]
)
def test_invalid_settings_are_usage_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        SamplingSettings(**kwargs)  # type: ignore[arg-type]
