"""A weight as the GGUF file stores it: raw blocks of a ggml type, memory-mapped, never expanded.

`QuantizedTensor` is what the GGUF loader hands on for every 2-D tensor that is not float32
(Q4_K, Q6_K, Q8_0, ... and F16/BF16 too): the bytes of its rows, the ggml type name and the
logical (rows, cols) shape. The model runs them through the C kernels (kernels/, quantized.py)
without a float copy; `dequantize()` gives the float32 values for the reference path, for GPUs
and for merging adapters.

Each row of a GGUF tensor is `cols / block` consecutive blocks, so selecting or reordering rows
(q/k from the interleaved rotary layout, embedding lookups) works on the raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class QuantizedTensor:
    data: torch.Tensor  # uint8 (rows, row_bytes): the file's bytes, memory-mapped where they were not reordered
    qtype: str  # ggml type name: "Q4_K", "Q8_0", "F16", ...
    shape: tuple[int, int]  # (rows, cols) in torch order: out_features, in_features for a linear layer

    @property
    def n_bytes(self) -> int:
        return self.data.numel()

    def rows(self, index: torch.Tensor) -> QuantizedTensor:
        """These rows in the order of `index` (a copy)."""
        return QuantizedTensor(self.data[index].contiguous(), self.qtype, (int(index.numel()), self.shape[1]))

    def dequantize(self) -> torch.Tensor:
        """float32 (rows, cols): the C kernels where they run, else the gguf package's numpy code."""
        from ..kernels import SUPPORTED, available, dequantize

        if self.qtype in ("F16", "BF16"):
            dtype = torch.float16 if self.qtype == "F16" else torch.bfloat16
            return self.data.view(dtype).view(self.shape).float()
        if self.qtype in SUPPORTED and available():
            return dequantize(self.data, self.qtype, self.shape[1])
        import gguf

        values = gguf.quants.dequantize(self.data.numpy(), gguf.GGMLQuantizationType[self.qtype])
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).view(self.shape)


def dense(tensor: torch.Tensor | QuantizedTensor) -> torch.Tensor:
    """A float tensor whatever was stored (quantized ones dequantized to float32)."""
    return tensor.dequantize() if isinstance(tensor, QuantizedTensor) else tensor
