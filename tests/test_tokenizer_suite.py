"""llama.cpp's own tokenizer tests (test-tokenizer-0) run against our GGUF tokenizers.

The vocab-only GGUFs `ggml-vocab-NAME.gguf`, with their `.inp` (test strings) and `.out` (the ids
llama.cpp gives, one line per string), live in llama.cpp's `models/` folder, which the
llama-cpp-python source distribution ships under `vendor/llama.cpp/models/` (MIT licence, the ggml
authors). $LLAMA_CPP_MODELS names that folder; `.ci/run` fills it with

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36

and these tests are skipped without it. Like test-tokenizer-0, each string is encoded without BOS
and with special tokens not parsed. Also checked for every string: decode(encode(s)) == s, the
streaming decoder gives the same text without a split character, and the tokenizer saved as the
model cache stores it gives the same ids.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llama_cli.gguf_metadata import read_gguf_metadata
from llama_cli.tokenizer import StreamDecoder, Tokenizer, load_tokenizer, tokenizer_from_gguf

FOLDER = os.environ.get("LLAMA_CPP_MODELS")
needs_suite = pytest.mark.skipif(
    not FOLDER, reason="set LLAMA_CPP_MODELS to llama.cpp's models/ folder (see .ci/run) to run its tokenizer suite"
)
SEPARATOR = "\n__ggml_vocab_test__\n"  # between the strings of a .inp file, as test-tokenizer-0.cpp splits them

# Every vocabulary of the suite whose tokenizer.ggml.model is llama (sentencepiece) or gpt2 (byte-level BPE).
VOCABS = [
    "llama-spm", "phi-3",  # sentencepiece: Llama 2, Mistral, TinyLlama, CodeLlama; Phi-3
    "llama-bpe", "deepseek-llm", "deepseek-coder", "qwen2", "qwen35", "gpt-2", "falcon", "mpt",
    "starcoder", "refact", "command-r",
]  # fmt: skip


def _path(name: str) -> Path:
    assert FOLDER is not None
    return Path(FOLDER) / f"ggml-vocab-{name}.gguf"


def _cases(name: str) -> list[tuple[str, list[int]]]:
    """(text, ids) pairs; a repeated text counts once, as in test-tokenizer-0's map."""
    raw = _path(name).with_suffix(".gguf.inp").read_text(encoding="utf-8")
    texts = raw.removesuffix(SEPARATOR).split(SEPARATOR)
    lines = _path(name).with_suffix(".gguf.out").read_text(encoding="utf-8").splitlines()
    assert len(texts) == len(lines), f"{name}: {len(texts)} strings, {len(lines)} lines of ids"
    cases = {text: [int(i) for i in line.split()] for text, line in zip(texts, lines)}
    return list(cases.items())


@needs_suite
@pytest.mark.parametrize("name", VOCABS)
def test_llama_cpp_tokenizer_suite(name: str, tmp_path: Path) -> None:
    metadata = read_gguf_metadata(_path(name))
    assert metadata["tokenizer.ggml.model"] in ("llama", "gpt2")
    tokenizer = tokenizer_from_gguf(metadata)
    cases = _cases(name)
    assert len(cases) >= 46
    wrong = [(text, want, got) for text, want in cases if (got := tokenizer.encode(text, bos=False)) != want]
    assert not wrong, f"{name}: {len(cases) - len(wrong)}/{len(cases)} pass; first failures: {wrong[:3]}"
    for text, ids in cases:
        assert tokenizer.decode(ids) == text
        _check_stream(tokenizer, ids)
    tokenizer.save(tmp_path)  # as the model cache stores it
    saved = load_tokenizer(tmp_path)
    assert saved.special == tokenizer.special
    assert all(saved.encode(text, bos=False) == ids for text, ids in cases)
    if name == "phi-3":  # <unk> is marked control and 53 [PAD] fillers unknown; sentencepiece wants one unknown piece
        assert tokenizer.special.stop_ids == {32000, 32007}  # <|endoftext|>, <|end|>
        assert tokenizer.encode("<|user|>\nHi<|end|>", bos=False, parse_special=True)[0] == 32010  # <|user|>
        assert tokenizer.encode("</s>", bos=False) == [2]  # a user-defined piece: matched even in plain text
        assert tokenizer.is_special(32011)  # [PAD32011]
    if name == "llama-bpe":
        assert tokenizer.special.add_bos and tokenizer.encode("Hi")[0] == tokenizer.special.bos_id == 128000  # <|begin_of_text|>


def _check_stream(tokenizer: Tokenizer, ids: list[int]) -> None:
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == tokenizer.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)


@needs_suite
def test_the_list_covers_every_llama_and_gpt2_vocab_of_the_suite() -> None:
    assert FOLDER is not None
    tested = sorted(p.name.removeprefix("ggml-vocab-").removesuffix(".gguf.inp") for p in Path(FOLDER).glob("ggml-vocab-*.gguf.inp"))
    assert set(VOCABS) <= set(tested)
    others = {name: read_gguf_metadata(_path(name)).get("tokenizer.ggml.model") for name in tested if name not in VOCABS}
    assert not {name: kind for name, kind in others.items() if kind in ("llama", "gpt2")}, "add these to VOCABS"
