"""Files made the way users get them (llama_cli/testing_models.py: an F16 GGUF written with `gguf`,
then quantized): every preset loads and generates, the writers keep what they should, and the
default path stays close to the float32 reference of the same file on real English text.

Legacy types, F16 and BF16 written by `gguf.quants` run everywhere; llama.cpp's presets need
llama-cpp-python (the `bench` extra, absent in CI) and skip without it.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from llama_cli import load
from llama_cli.config import RopeScaling
from llama_cli.model import rope_frequencies
from llama_cli.perplexity import kl_compare, kl_summary
from llama_cli.testing_models import GGUF_TYPES, PRESETS, default_model_path, llama3_rope_factors

CASES = [pytest.param(p, "gguf", id=f"{p}-gguf") for p in GGUF_TYPES] + [pytest.param(p, "llama.cpp", id=f"{p}-llama.cpp") for p in PRESETS]
# The default model at Q4_0 loses its answer in the weights themselves: the float32 reference of
# that file (gguf.quants or llama.cpp, the same bytes) says " capitalised as it is capitalised.".
# Every other preset's float32 reference begins " Paris" (measured 2026-11-29, Q2_K included).
WRONG_ANSWER = {"Q4_0"}


def english_text() -> str:
    """~5,000 characters of English prose (~1,100 tokens): the paragraphs of Python's "Execution
    model" reference chapter (pydoc_data, in every Python) without its grammar, code and headings."""
    from pydoc_data.topics import topics

    paragraphs = []
    for key in ("execmodel", "exceptions"):
        for para in topics[key].split("\n\n"):
            if para[:1].isupper() and "\n" in para and "::=" not in para and "***" not in para:
                paragraphs.append(" ".join(para.split()))
    return "\n\n".join(paragraphs)[:5200]


def storage_types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize("model", ["tiny", "default"])
@pytest.mark.parametrize(("preset", "engine"), CASES)
def test_every_preset_loads_and_generates(model_files, model: str, preset: str, engine: str) -> None:  # type: ignore[no-untyped-def]
    path = model_files(model, preset, engine)
    llm = load(path, cache=False)
    text = llm.generate("The capital of France is", max_tokens=8, temperature=0)
    assert text.strip(), (llm.path_label, text)
    if model == "default" and preset not in WRONG_ANSWER:
        assert "Paris" in text, (llm.path_label, text)


@pytest.mark.parametrize("preset", ["Q4_0", "Q5_1", "Q8_0", "BF16"])
def test_gguf_quantizer_writes_every_matrix_as_the_preset_type(model_files, preset: str) -> None:  # type: ignore[no-untyped-def]
    types = storage_types(model_files("tiny", preset, "gguf"))
    assert {t for name, t in types.items() if not name.endswith("norm.weight") and name != "output.weight"} == {preset}
    assert types["output.weight"] == (
        "Q8_0" if preset.startswith(("Q4", "Q5")) else preset
    )  # the head stays at 8 bits, as llama.cpp keeps it
    assert {t for name, t in types.items() if name.endswith("norm.weight")} == {"F32"}


def test_llama_cpp_k_presets_mix_types_as_llama_quantize_does(model_files) -> None:  # type: ignore[no-untyped-def]
    tiny = set(storage_types(model_files("tiny", "Q4_K_M", "llama.cpp")).values())
    assert {"Q4_K", "Q6_K"} <= tiny  # every row of the tiny model is a multiple of 256
    default = set(storage_types(model_files("default", "Q4_K_M", "llama.cpp")).values())
    assert default - {"F32", "Q4_K", "Q6_K"}, default  # SmolLM2's rows of 576 fall back to legacy types


def test_default_model_as_f16_keeps_every_key_and_value(model_files) -> None:  # type: ignore[no-untyped-def]
    source = gguf.GGUFReader(default_model_path())
    copy = gguf.GGUFReader(model_files("default", "F16", "gguf"))
    skip = {"GGUF.kv_count", "general.file_type", "general.quantization_version"}
    assert {k for k in source.fields if k not in skip} == {k for k in copy.fields if k not in skip}
    for key in (
        "tokenizer.chat_template",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "llama.rope.freq_base",
    ):
        assert source.fields[key].contents() == copy.fields[key].contents(), key
    assert copy.fields["general.file_type"].contents() == 1  # MOSTLY_F16
    written = {t.name: t for t in copy.tensors}
    for t in source.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        got = written[t.name]
        assert got.tensor_type.name == ("F16" if len(t.shape) == 2 else "F32") and list(got.shape) == list(t.shape)
        np.testing.assert_allclose(np.asarray(got.data, dtype=np.float32).reshape(values.shape), values, rtol=1e-3, atol=1e-6)


def test_tiny_random_model_has_the_default_models_tokenizer(model_files, llm) -> None:  # type: ignore[no-untyped-def]
    tiny = load(model_files("tiny", "F16", "gguf"), dtype="float32", cache=False)
    assert (tiny.model.config.dim, tiny.model.config.n_layers, tiny.model.config.n_kv_heads) == (256, 2, 2)
    prompt = "Hello, world! 123\nThe capital of France"
    assert tiny.tokenizer.encode(prompt) == llm.tokenizer.encode(prompt)
    assert tiny.checkpoint.chat_template == llm.checkpoint.chat_template


def test_llama3_rope_factors_are_llama31_scaling() -> None:
    scaling = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_context=8192)
    base = rope_frequencies(64, 500000.0, None).double()
    expected = rope_frequencies(64, 500000.0, scaling).double()
    torch.testing.assert_close(base / torch.from_numpy(llama3_rope_factors(64, 500000.0)).double(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize(("preset", "engine"), CASES)
def test_default_path_stays_close_to_the_float32_reference(model_files, preset: str, engine: str) -> None:  # type: ignore[no-untyped-def]
    """The figures llama.cpp users compare quants by, between the default path and the float32
    reference of the same file: top-1 agreement >= 98%, mean KL <= 0.01 over 1,000+ tokens."""
    path = model_files("default", preset, engine)
    fast = load(path, cache=False)
    reference = load(path, dtype="float32", cache=False)
    ids = fast.tokenizer.encode(english_text())
    assert len(ids) >= 1000
    compared = kl_compare(fast.model, reference.model, ids, 512)
    summary = kl_summary(compared.kl)
    figures = (
        f"{preset} ({engine}), {fast.path_label} vs float32, {compared.positions} positions: mean KL {summary['mean']:.6f}, "
        f"p99 {summary['p99']:.6f}, max {summary['max']:.6f}, top-1 {100 * compared.top1_agreement:.2f}%, "
        f"perplexity {compared.result.perplexity:.4f} vs {compared.reference.perplexity:.4f}"
    )
    print(figures)
    assert compared.top1_agreement >= 0.98 and summary["mean"] <= 0.01, figures
