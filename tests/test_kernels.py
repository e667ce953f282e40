"""The C kernels (llama_cli.kernels) against the gguf package's numpy reference.

For every supported type: `dequantize` must equal `gguf.quants.dequantize` bit for bit, and
`linear` must match x @ W.T within the error of int8 activations; the SIMD kernels must also
agree with the portable C kernels (same int8 activations, so only float summation order differs).
Weights come from `gguf.quants.quantize` where the package can quantize the type, otherwise from
random bytes with sane float16 scales (every bit pattern of the rest of a block is valid).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from llama_cli import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"C kernels unavailable: {kernels.describe()}")

# Byte offsets of the float16 scales in blocks made from random bytes: random bits there could be
# NaN or huge, so they are overwritten with small positive values.
F16_FIELDS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "IQ4_NL": (0,), "IQ4_XS": (0,)}


def make_weight(qtype: str, n_rows: int, k: int, seed: int = 0) -> np.ndarray:
    """uint8 (n_rows, row_bytes): a GGUF tensor of type `qtype`."""
    rng = np.random.default_rng(seed)
    if qtype not in F16_FIELDS:
        floats = rng.standard_normal((n_rows, k), dtype=np.float32)
        return np.ascontiguousarray(gguf_quantize(floats, GGMLQuantizationType[qtype])).view(np.uint8)
    elements, nbytes = kernels.block_shape(qtype)
    blocks = rng.integers(0, 256, size=(n_rows, k // elements, nbytes), dtype=np.uint8)
    for offset in F16_FIELDS[qtype]:
        scale = rng.uniform(1e-3, 4e-3, size=blocks.shape[:2]).astype(np.float16)
        blocks[..., offset : offset + 2] = scale.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return blocks.reshape(n_rows, -1)


def reference(weight: np.ndarray, qtype: str) -> np.ndarray:
    return gguf_dequantize(weight, GGMLQuantizationType[qtype]).astype(np.float32)


def column_count(qtype: str) -> int:
    return 512 if kernels.block_shape(qtype)[0] == 256 else 96


@pytest.mark.parametrize("qtype", sorted(kernels.SUPPORTED))
def test_dequantize_is_exact(qtype: str) -> None:
    k = column_count(qtype)
    weight = make_weight(qtype, 9, k)
    expected = reference(weight, qtype)
    got = kernels.dequantize(torch.from_numpy(weight), qtype, k)
    assert got.shape == (9, k) and got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), expected)
    rows = torch.tensor([[7, 0], [7, 3]])  # an embedding lookup: any shape, repeats allowed
    np.testing.assert_array_equal(kernels.dequantize(torch.from_numpy(weight), qtype, k, rows).numpy(), expected[[7, 0, 7, 3]])


@pytest.mark.parametrize("qtype", sorted(kernels.SUPPORTED))
def test_linear_matches_dequantized_matmul(qtype: str) -> None:
    k, n = column_count(qtype), 37  # odd N: a partial chunk for each thread
    weight = torch.from_numpy(make_weight(qtype, n, k, seed=1))
    wref = torch.from_numpy(reference(weight.numpy(), qtype))
    generator = torch.Generator().manual_seed(0)
    tolerance = 1e-5 if qtype in ("F16", "BF16") else 1.5e-2  # int8 activations otherwise
    for m in (1, 3, 17, 64):  # partial and whole tiles of 8 activation rows
        x = torch.randn(m, k, generator=generator)
        expected = x @ wref.T
        got = kernels._linear(x, weight, qtype, n, k, path="int8")
        assert got.shape == (m, n)
        error = (got - expected).norm() / expected.norm()
        assert error < tolerance, f"{qtype} M={m}: relative error {error:.2e}"
        portable = kernels._linear(x, weight, qtype, n, k, path="int8", simd=False)
        drift = (got - portable).norm() / portable.norm()
        assert drift < 1e-5, f"{qtype} M={m}: SIMD and portable kernels differ by {drift:.2e}"
        tiled = kernels._linear(x, weight, qtype, n, k, path="bf16")  # bfloat16 weights and activations
        error = (tiled - expected).norm() / expected.norm()
        assert error < 1e-2, f"{qtype} M={m}, bfloat16 tiles: relative error {error:.2e}"
        assert kernels.linear(x, weight, qtype, n, k).shape == (m, n)


@pytest.mark.parametrize("qtype", sorted(kernels.SUPPORTED))
def test_int8_rows_are_batch_invariant(qtype: str) -> None:
    """Each row of an int8-path product is bit-identical to that row computed alone, whatever M
    and the thread count: prompt-lookup decoding verifies drafted tokens in one batch and must
    pick exactly the tokens plain decoding picks."""
    elements = kernels.block_shape(qtype)[0]
    k = 1280 if elements == 256 else 1248  # 5 blocks of 256, or 39 of 32: an odd last block
    n = 161  # enough bytes at M = 1 for two threads to split the rows, and an odd split
    weight = torch.from_numpy(make_weight(qtype, n, k, seed=3))
    x = torch.randn(31, k, generator=torch.Generator().manual_seed(3))
    threads = torch.get_num_threads()
    try:
        for simd in (True, False):
            torch.set_num_threads(1)
            alone = torch.cat([kernels._linear(x[i : i + 1], weight, qtype, n, k, simd=simd) for i in range(31)])
            for t in (1, 2):
                torch.set_num_threads(t)
                for m in (1, 2, 3, 5, 8, 9, 17, 31):  # partial and whole tiles of 8 rows
                    got = kernels.linear(x[:m], weight, qtype, n, k) if simd else kernels._linear(x[:m], weight, qtype, n, k, simd=False)
                    differ = (got.view(torch.int32) != alone[:m].view(torch.int32)).any(dim=1)
                    assert not differ.any(), f"{qtype} M={m} threads={t} simd={simd}: rows {differ.nonzero().flatten().tolist()} differ"
    finally:
        torch.set_num_threads(threads)


def test_bf16_tiles_cover_every_row() -> None:
    k, n = 256, 300  # several tiles, the last one partial
    weight = torch.from_numpy(make_weight("Q4_K", n, k, seed=2))
    x = torch.randn(20, k)
    expected = x @ torch.from_numpy(reference(weight.numpy(), "Q4_K")).T
    old = kernels.TILE_BYTES
    kernels.TILE_BYTES = 64 * 2 * k
    try:
        got = kernels._linear(x, weight, "Q4_K", n, k, path="bf16")
    finally:
        kernels.TILE_BYTES = old
    assert (got - expected).norm() / expected.norm() < 1e-2


def test_read_only_memmap_weight(tmp_path) -> None:
    weight = make_weight("Q4_K", 5, 256)
    path = tmp_path / "w.bin"
    weight.tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=weight.shape)
    with pytest.warns(UserWarning):  # torch warns that the array is not writable
        tensor = torch.from_numpy(mapped)
    x = torch.randn(2, 256)
    expected = kernels.linear(x, torch.from_numpy(weight), "Q4_K", 5, 256)
    torch.testing.assert_close(kernels.linear(x, tensor, "Q4_K", 5, 256), expected, rtol=0, atol=0)


def test_bad_arguments_are_refused() -> None:
    weight = torch.from_numpy(make_weight("Q8_0", 4, 64))
    with pytest.raises(ValueError, match="unsupported tensor type"):
        kernels.linear(torch.zeros(1, 64), weight, "Q7_0", 4, 64)
    with pytest.raises(ValueError, match="shape"):
        kernels.linear(torch.zeros(1, 64), weight, "Q8_0", 5, 64)
    with pytest.raises(ValueError, match="float32"):
        kernels.linear(torch.zeros(1, 64, dtype=torch.float64), weight, "Q8_0", 4, 64)
    with pytest.raises(IndexError):
        kernels.dequantize(weight, "Q8_0", 64, torch.tensor([4]))


def test_block_shapes_and_description() -> None:
    assert kernels.block_shape("Q4_K") == (256, 144)
    assert kernels.block_shape("Q8_0") == (32, 34)
    assert kernels.describe().startswith("C kernels, ")


def test_a_failed_build_is_reported(monkeypatch, tmp_path) -> None:
    from llama_cli.kernels import _build

    monkeypatch.setenv("LLAMA_CACHE", str(tmp_path))
    monkeypatch.setattr(_build, "_compiler", lambda: "/bin/false")  # a "compiler" that always fails
    with pytest.raises(_build.KernelBuildError, match="failed to compile"):
        _build.load()
    assert not list((tmp_path / "kernels").rglob("*.so"))  # no half-written library left behind
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_error", "no C compiler found")
    assert not kernels.available()
    assert kernels.describe() == "pure torch (no C compiler found)"
    with pytest.raises(RuntimeError, match="not available"):
        kernels.dequantize(torch.zeros(1, 34, dtype=torch.uint8), "Q8_0", 32)


def test_a_type_that_does_not_build_runs_the_portable_kernel(monkeypatch, tmp_path) -> None:
    # The core library works; one type's int8 library fails to compile: that type still multiplies,
    # through the core's portable kernel, with the same results.
    from llama_cli.kernels import _build

    k, n = 64, 5
    weight = torch.from_numpy(make_weight("Q4_0", n, k, seed=4))
    x = torch.randn(2, k, generator=torch.Generator().manual_seed(4))
    expected = kernels._linear(x, weight, "Q4_0", n, k, simd=False)
    monkeypatch.setattr(kernels, "_kernels", {})
    monkeypatch.setenv("LLAMA_CACHE", str(tmp_path))

    def fail(types: dict[str, int] | None = None) -> None:
        raise _build.KernelBuildError("the C kernels failed to compile: simd.c: error")

    monkeypatch.setattr(_build, "load", fail)
    assert kernels.prepare(["Q4_0"])
    assert kernels.kernel_of("Q4_0") is None
    assert torch.equal(kernels.linear(x, weight, "Q4_0", n, k), expected)


def test_one_process_builds_while_the_others_wait(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Processes starting together (pytest's workers, a script's parallel runs) take each missing
    library's lock in turn, so each checks for a library only after the one building it ends;
    different libraries build at once."""
    import threading

    from llama_cli.kernels._build import _one_builder

    entered = threading.Event()

    def second() -> None:
        with _one_builder(tmp_path / "build", ["libllk-Q4_1.so", "libllk.so"]):  # its own open files: flock waits as across processes
            entered.set()

    with _one_builder(tmp_path / "build", ["libllk.so"]), _one_builder(tmp_path / "build", ["libllk-Q4_0.so"]):  # another type: no wait
        waiter = threading.Thread(target=second)
        waiter.start()
        assert not entered.wait(0.3)  # still waiting for the lock
    assert entered.wait(5)
    waiter.join()
