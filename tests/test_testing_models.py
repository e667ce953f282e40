"""llama_cli/testing_models.py's own reader and layer cutting, against gguf's reader, on a small file.

The suite's GGUF test files are read with `GGUFFile` (llama's header walk) instead of
`gguf.GGUFReader`; here both read one file that holds every kind of key/value and several tensor
types, and must agree on every field's value types and contents and every tensor's name, shape,
type and stored bytes. `slice_file` must renumber the layers it keeps and copy their bytes as they are.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as Q

from llama_cli.testing_models import GGUFFile, slice_file


@pytest.fixture
def small_gguf(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(tmp_path / "small.gguf", "llama")
    writer.add_block_count(3)
    writer.add_context_length(64)
    writer.add_rope_freq_base(10000.0)
    writer.add_bool("test.flag", True)
    writer.add_int8("test.int8", -5)
    writer.add_uint64("test.uint64", 2**40)
    writer.add_float64("test.float64", 0.125)
    writer.add_string("test.text", "héllo, wörld")
    writer.add_array("test.words", ["a", "", "ünïcode", "with space"])
    writer.add_array("test.numbers", [3, 1, 4, 1, 5])
    writer.add_token_scores([0.5, -1.0, 2.25])
    for layer in range(3):
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", rng.standard_normal(64, dtype=np.float32))
        writer.add_tensor(f"blk.{layer}.attn_q.weight", rng.standard_normal((64, 64)).astype(np.float16))
        q8 = gguf.quants.quantize(rng.standard_normal((32, 64), dtype=np.float32), Q.Q8_0)
        writer.add_tensor(f"blk.{layer}.ffn_up.weight", q8, raw_dtype=Q.Q8_0)
    q41 = gguf.quants.quantize(rng.standard_normal((16, 64), dtype=np.float32), Q.Q4_1)
    writer.add_tensor("token_embd.weight", q41, raw_dtype=Q.Q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tmp_path / "small.gguf"


def test_gguf_file_reads_what_gguf_reads(small_gguf: Path) -> None:
    ours, theirs = GGUFFile(small_gguf), gguf.GGUFReader(small_gguf)
    assert set(ours.fields) == {key for key in theirs.fields if not key.startswith("GGUF.")}
    for key, field in ours.fields.items():
        assert field.types == theirs.fields[key].types, key
        assert field.contents() == theirs.fields[key].contents(), key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, reference in zip(ours.tensors, theirs.tensors):
        assert mine.tensor_type == reference.tensor_type and list(mine.shape) == [int(n) for n in reference.shape], mine.name
        assert mine.data.tobytes() == np.ascontiguousarray(reference.data).tobytes(), mine.name


def test_slice_file_renumbers_the_layers_it_keeps(small_gguf: Path, tmp_path: Path) -> None:
    cut = GGUFFile(slice_file(small_gguf, tmp_path / "cut.gguf", 1, 2))
    source = {t.name: t for t in GGUFFile(small_gguf).tensors}
    assert cut.fields["llama.block_count"].contents() == 2
    assert "tokenizer.ggml.scores" not in cut.fields and cut.fields["test.text"].contents() == "héllo, wörld"
    assert sorted(t.name for t in cut.tensors) == sorted(
        f"blk.{i}.{part}" for i in (0, 1) for part in ("attn_norm.weight", "attn_q.weight", "ffn_up.weight")
    )
    for t in cut.tensors:
        layer, part = t.name.split(".", 2)[1:]
        original = source[f"blk.{int(layer) + 1}.{part}"]  # layer i of the cut is layer i + 1 of the source
        assert t.tensor_type == original.tensor_type and t.shape == original.shape and t.data.tobytes() == original.data.tobytes()
