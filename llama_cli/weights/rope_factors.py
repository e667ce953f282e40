"""Llama 3.1 rope scaling recovered from llama.cpp's `rope_freqs` tensor (the divisor of each rotary frequency)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig, RopeScaling
from ..errors import ModelFormatError
from ..model import rope_frequencies
from .common import linear_rope_scaling


def scaling_from_factors(values: np.ndarray, config: ModelConfig, path: Path, name: str) -> RopeScaling | None:
    """The RopeScaling of the file's `name` tensor (its values as float64)."""
    return _rope_from_factors(torch.from_numpy(values), config, path, name)


def _rope_from_factors(factors: torch.Tensor, config: ModelConfig, path: Path, name: str) -> RopeScaling | None:
    """The RopeScaling whose frequencies equal base frequencies / `factors` (llama.cpp's rope_freqs).

    Llama 3.1 scaling divides low frequencies by `factor`, keeps high ones, and blends in between
    with a weight `smooth` that is a straight line in the frequency. Only the ratios
    original_context / low_freq_factor and original_context / high_freq_factor matter, so the
    standard values (1, 4, 8192) are tried first; otherwise the line is recovered from the blended
    frequencies (or, with fewer than two, any line that keeps each frequency on its side), and the
    result is checked against the tensor.
    """
    base = rope_frequencies(config.head_dim, config.rope_theta, None).double()
    if factors.shape != base.shape or not bool(torch.isfinite(factors).all()) or float(factors.min()) < 1 - 1e-6:
        raise ModelFormatError(f"{path}: {name} must hold head_dim/2 = {base.numel()} divisors >= 1")
    factor = float(factors.max())
    if factor < 1 + 1e-6:
        return None
    if bool(torch.allclose(factors, torch.full_like(factors, factor))):
        return linear_rope_scaling(factor)
    candidates = [RopeScaling(factor=factor, low_freq_factor=1.0, high_freq_factor=4.0, original_context=8192)]
    line = _smooth_line(base, factors, factor)
    if line is not None:
        slope, intercept = line  # smooth = slope * freq + intercept = (context * freq / 2pi - low) / (high - low)
        span = 8192 / (2 * math.pi * slope)
        low = -intercept * span
        candidates.append(RopeScaling(factor=factor, low_freq_factor=low, high_freq_factor=low + span, original_context=8192))
    wanted = base / factors
    for scaling in candidates:
        if torch.allclose(rope_frequencies(config.head_dim, config.rope_theta, scaling).double(), wanted, rtol=1e-4, atol=0):
            return scaling
    raise ModelFormatError(f"{path}: {name} does not follow Llama 3.1 rope scaling; this rope variant is not supported")


def _smooth_line(base: torch.Tensor, factors: torch.Tensor, factor: float) -> tuple[float, float] | None:
    """(slope, intercept) with smooth <= 0 at divided frequencies, = the blend weight in the band,
    >= 1 at kept ones, and <= 0 at frequency 0; None when no such line exists."""
    band = (factors > 1 + 1e-6) & (factors < factor * (1 - 1e-6))
    smooth = (1 / factors - 1 / factor) / (1 - 1 / factor)  # 0: divided by factor, 1: kept
    f, s = base[band].tolist(), smooth[band].tolist()
    divided = base[factors >= factor * (1 - 1e-6)].tolist()
    lo, hi = max(divided, default=0.0), min(base[factors <= 1 + 1e-6].tolist(), default=None)
    if len(f) >= 2:
        slope, intercept = (float(v) for v in np.polyfit(f, s, 1))
    elif len(f) == 1:  # steep enough to reach 0 before the next divided frequency and 1 before the next kept one
        slope = max(s[0] / (f[0] - lo), (1 - s[0]) / (hi - f[0]) if hi is not None else 0.0)
        intercept = s[0] - slope * f[0]
    elif hi is not None:  # a step between the last divided and the first kept frequency
        slope = 1 / (hi - lo)
        intercept = -slope * lo
    else:
        return None
    return (slope, intercept) if slope > 0 and intercept <= 1e-9 else None
