"""Tokenizers: the default model's GGUF vocabulary against transformers, sentencepiece against
itself, save/load round trips, streaming detokenization, and the errors for unusable inputs."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sentencepiece
from tokenizers import Tokenizer as Backend
from tokenizers import pre_tokenizers

from llama_cli.errors import ModelFormatError, TokenizerError
from llama_cli.gguf_metadata import metadata_from_reader, read_gguf_metadata
from llama_cli.tokenizer import (
    BPETokenizer,
    SentencePieceTokenizer,
    SpecialTokens,
    StreamDecoder,
    Tokenizer,
    chat_template_from_folder,
    load_tokenizer,
    tokenizer_from_gguf,
)  # fmt: skip

PROSE = (
    "The quick brown fox jumps over the lazy dog. It's a well-known pangram; don't you think?\n"
    "She said, \"We'll see.\" They're here -- and I'm not. Café, naïve, résumé."
)
CODE = 'def fib(n: int) -> int:\n    """Return the n-th number."""\n    if n < 2:\n\treturn n\n    return fib(n - 1) + fib(n - 2)\n'
CJK = "日本語のテキストです。東京は首都。中文句子，还有标点！한국어 문장입니다."
EMOJI = "Family: 👩‍👩‍👧 and 👨🏽‍💻, flags 🇫🇷🇯🇵, thumbs 👍🏿!"
SPACES = "runs   of    spaces,\t\ttabs\t and\n\n\nnewlines \n \r\n end   "
DIGITS = "In 2024, pi is 3.14159 and a million is 1,000,000."
MIXED = "Prix: 12,50 € — “quoted” text; x² + y² = z²; <b>bold</b> 🙂 ok"
# Whitespace runs before digits, and a space before a non-ASCII digit (½, ٣): here transformers' GGUF
# loader (no Digits pre-tokenizer for "smollm") gives other ids than the original SmolLM2 tokenizer and
# llama.cpp; see test_digits_follow_original_smollm.
DIGITS_AFTER_SPACES = "x  2\n    42 = [1,  2,   3]\n\n3 and  ½ and ٣; ½ cup"
CORPUS = [PROSE, CODE, CJK, EMOJI, SPACES, DIGITS, MIXED, " leading and trailing ", "a", ""]


@pytest.fixture(scope="module")
def metadata(default_model_path: Path) -> dict[str, Any]:
    return read_gguf_metadata(default_model_path)


@pytest.fixture(scope="module")
def smollm(metadata: dict[str, Any]) -> Tokenizer:
    return tokenizer_from_gguf(metadata)


def test_gguf_metadata_is_plain_python(metadata: dict[str, Any]) -> None:
    assert metadata["general.architecture"] == "llama"
    assert metadata["tokenizer.ggml.model"] == "gpt2" and metadata["tokenizer.ggml.pre"] == "smollm"
    assert metadata["tokenizer.ggml.add_bos_token"] is False
    assert type(metadata["tokenizer.ggml.bos_token_id"]) is int
    assert all(type(t) is str for t in metadata["tokenizer.ggml.tokens"][:100])
    assert not any(key.startswith("GGUF.") for key in metadata)


def test_unreadable_gguf(default_model_path: Path, tmp_path: Path) -> None:
    with default_model_path.open("rb") as file:
        head = file.read(1000)
    for name, data in [("text.gguf", b"not a GGUF file"), ("truncated.gguf", head)]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelFormatError, match="cannot read GGUF"):
            read_gguf_metadata(tmp_path / name)


def test_gguf_metadata_reader_matches_gguf_package(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "kinds.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    values = {
        "uint8": 200, "int8": -5, "uint16": 60000, "int16": -300, "uint32": 4_000_000_000, "int32": -7, "float32": 0.1,
        "bool": True, "uint64": 2**63, "int64": -(2**40), "float64": 0.1, "string": "héllo",
    }  # fmt: skip
    for kind, value in values.items():
        getattr(writer, f"add_{kind}")(f"k.{kind}", value)
    arrays = {
        "strings": ["x", "ÿ", "", "a longer item " * 4],
        "ints": [1, -2, 3],
        "floats": [0.5, 1.5],
        "bools": [True, False],
        "nested": [[1, 2], [3]],
    }
    for name, items in arrays.items():
        writer.add_array(f"k.{name}", items)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    ours, theirs = read_gguf_metadata(path), metadata_from_reader(gguf.GGUFReader(path))
    assert ours.pop("k.nested") == [[1, 2], [3]]  # the gguf package flattens arrays of arrays (none occur in real files)
    assert ours == {k: v for k, v in theirs.items() if k != "k.nested"}
    assert ours["k.float32"] == float(np.float32(0.1)) and ours["k.uint64"] == 2**63 and ours["k.string"] == "héllo"
    data = path.read_bytes()
    for cut in (30, len(data) - 3):  # inside a key, inside the last array
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(ModelFormatError, match="truncated or corrupt"):
            read_gguf_metadata(tmp_path / "cut.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="cannot read GGUF"):
        read_gguf_metadata(tmp_path / "empty.gguf")
    long_item = data.index(b"a longer item")  # an item of the string array (read in one loop of its own)
    (tmp_path / "cut.gguf").write_bytes(data[: long_item + 10])
    with pytest.raises(ModelFormatError, match=f"a length of 56 bytes at byte {long_item} .* truncated or corrupt"):
        read_gguf_metadata(tmp_path / "cut.gguf")
    inside = data.index("ÿ".encode())
    (tmp_path / "latin1.gguf").write_bytes(data[:inside] + b"\xff\xff" + data[inside + 2 :])
    with pytest.raises(ModelFormatError, match="a string that is not UTF-8"):
        read_gguf_metadata(tmp_path / "latin1.gguf")
    rng = random.Random(0)
    for _ in range(300):  # damaged bytes anywhere: a dict or a one-line ModelFormatError, never another exception
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] = rng.choice([0x00, 0xFF, 0x7F, rng.randrange(256)])
        (tmp_path / "damaged.gguf").write_bytes(damaged)
        try:
            read_gguf_metadata(tmp_path / "damaged.gguf")
        except ModelFormatError:
            pass


@pytest.mark.real_model
@pytest.mark.parametrize("text", CORPUS)
def test_default_model_ids_match_transformers(smollm: Tokenizer, hf_tokenizer, text: str) -> None:  # type: ignore[no-untyped-def]
    assert smollm.encode(text) == hf_tokenizer(text, add_special_tokens=True)["input_ids"]


@pytest.mark.real_model
def test_digits_follow_original_smollm(smollm: Tokenizer, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    # SmolLM2's own tokenizer.json splits every digit before the byte-level regex; llama.cpp's
    # "smollm" pre-tokenizer does the same. Rebuild that from transformers' vocabulary and compare.
    original = Backend.from_str(hf_tokenizer.backend_tokenizer.to_str())
    original.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    for text in [*CORPUS, DIGITS_AFTER_SPACES]:
        assert smollm.encode(text) == original.encode(text, add_special_tokens=False).ids
    # "x", "  " (256 is two spaces), "2": the spaces do not join the digit's chunk.
    assert smollm.encode("x  2") == [104, 256, 34]
    assert smollm.encode("2024") == [34, 32, 34, 36]  # one token per digit


@pytest.mark.parametrize("text", [*CORPUS, DIGITS_AFTER_SPACES])
def test_default_model_round_trip(smollm: Tokenizer, text: str) -> None:
    assert smollm.decode(smollm.encode(text)) == text


def test_default_model_special_tokens(smollm: Tokenizer) -> None:
    special = smollm.special
    assert (special.bos_id, special.eos_id, special.add_bos) == (1, 2, False)  # 1 <|im_start|>, 2 <|im_end|>
    assert special.stop_ids == {0, 2}  # 0 <|endoftext|>, 2 <|im_end|>
    assert smollm.vocab_size == 49152
    assert smollm.encode("<|im_start|>user", parse_special=True) == [1, 4093]  # <|im_start|>, "user"
    plain = smollm.encode("<|im_start|>user")
    assert 1 not in plain and smollm.decode(plain) == "<|im_start|>user"
    assert smollm.encode("hi", bos=True) == [1, *smollm.encode("hi")]
    assert smollm.decode([1, 4093, 198, 2]) == "user\n"
    assert smollm.decode([1, 4093, 2], skip_special=False) == "<|im_start|>user<|im_end|>"
    assert smollm.is_special(0) and smollm.is_special(2) and not smollm.is_special(4093)


def test_default_model_pieces(smollm: Tokenizer) -> None:
    ids = smollm.encode("The capital of France is Paris")
    assert [smollm.piece(i) for i in ids] == ["The", " capital", " of", " France", " is", " Paris"]
    assert smollm.piece(2) == "<|im_end|>"
    # An emoji spans byte tokens; bytes that are not a whole character show as <0xNN>.
    pieces = [smollm.piece(i) for i in smollm.encode("👍")]
    assert all(p.startswith("<0x") for p in pieces) and len(pieces) > 1


def test_save_and_load_round_trip(smollm: Tokenizer, tmp_path: Path) -> None:
    smollm.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_special.json"]
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer) and loaded.special == smollm.special
    for text in [*CORPUS, DIGITS_AFTER_SPACES, "<|im_start|>user\nhi<|im_end|>"]:
        assert loaded.encode(text) == smollm.encode(text)
        assert loaded.encode(text, parse_special=True) == smollm.encode(text, parse_special=True)


def _tiny_byte_level_gguf(pre: str) -> dict[str, Any]:
    tokens = [*sorted(pre_tokenizers.ByteLevel.alphabet()), "12", "123", "1234", "ab", "<|eot_id|>"]
    return {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * (len(tokens) - 1) + [3], "tokenizer.ggml.merges": ["1 2", "12 3", "123 4"],
        "tokenizer.ggml.bos_token_id": len(tokens) - 1, "tokenizer.ggml.eos_token_id": len(tokens) - 1,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("pre", "digits", "add_bos"),
    [
        ("gpt2", ["1234"], False),  # one chunk of digits
        ("smollm", ["1", "2", "3", "4"], False),  # each digit alone
        ("qwen2", ["1", "2", "3", "4"], False),
        ("llama-bpe", ["123", "4"], True),  # up to three digits; BOS by default
    ],
)
def test_pre_tokenizers_by_name(pre: str, digits: list[str], add_bos: bool) -> None:
    metadata = _tiny_byte_level_gguf(pre)
    tokenizer = tokenizer_from_gguf(metadata)
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    eot = len(tokens) - 1  # <|eot_id|>
    assert tokenizer.special == SpecialTokens(eot, eot, frozenset({eot}), add_bos)
    assert tokenizer.encode("1234", bos=False) == [tokens.index(d) for d in digits]
    # Llama 3 takes a word that is in the vocabulary whole, merges or not ("ab" has no merge).
    assert tokenizer.encode("ab", bos=False) == ([tokens.index("ab")] if pre == "llama-bpe" else [tokens.index("a"), tokens.index("b")])
    assert tokenizer.encode("x<|eot_id|>", bos=False, parse_special=True)[-1] == eot
    assert tokenizer.decode(tokenizer.encode(EMOJI + SPACES)) == EMOJI + SPACES


# ---------------------------------------------------------------- sentencepiece, trained here

SPM_TRAINING_TEXT = "\n".join([PROSE, CODE.replace("\t", "    "), DIGITS] * 3 + [
    "Once upon a time, in a land far away, there lived a small tokenizer that learned from very little text.",
    "Each morning it read the same sentences again, and each evening it merged the pieces it saw most often.",
])  # fmt: skip


@pytest.fixture(scope="module")
def sp_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny sentencepiece models (vocabulary 320, byte fallback), lossless: no normalization."""
    folder = tmp_path_factory.mktemp("spm")
    (folder / "corpus.txt").write_text(SPM_TRAINING_TEXT, encoding="utf-8")
    for kind in ("bpe", "unigram"):
        sentencepiece.SentencePieceTrainer.train(
            input=str(folder / "corpus.txt"), model_prefix=str(folder / kind), vocab_size=320, model_type=kind,
            byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2,
        )  # fmt: skip
    return {kind: folder / f"{kind}.model" for kind in ("bpe", "unigram")}


@pytest.fixture(params=["bpe", "unigram"])
def sp_model(request: pytest.FixtureRequest, sp_models: dict[str, Path]) -> Path:
    return sp_models[request.param]


def _spm(path: Path) -> tuple[sentencepiece.SentencePieceProcessor, SentencePieceTokenizer]:
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    special = SpecialTokens(sp.bos_id(), sp.eos_id(), frozenset({sp.eos_id()}), add_bos=True)
    return sp, SentencePieceTokenizer(sp, special)


@pytest.mark.parametrize("text", CORPUS)
def test_sentencepiece_matches_the_library(sp_model: Path, text: str) -> None:
    sp, tokenizer = _spm(sp_model)
    assert tokenizer.encode(text) == sp.encode(text, add_bos=True)
    assert tokenizer.decode(tokenizer.encode(text)) == text == sp.decode(sp.encode(text))


def test_sentencepiece_special_tokens(sp_model: Path, tmp_path: Path) -> None:
    sp, tokenizer = _spm(sp_model)
    bos, eos = sp.bos_id(), sp.eos_id()  # 1 <s>, 2 </s>
    assert tokenizer.encode("<s>hello</s> you", bos=False, parse_special=True) == [bos, *sp.encode("hello"), eos, *sp.encode(" you")]
    assert tokenizer.encode("<s>hello", bos=False) == sp.encode("<s>hello")
    ids = [bos, *sp.encode("hello"), eos, *sp.encode("you")]  # "▁hello", "▁you"
    assert tokenizer.decode(ids) == "hello you" == sp.decode(ids)
    assert tokenizer.decode(ids, skip_special=False) == "<s> hello</s> you"
    assert tokenizer.is_special(bos) and not tokenizer.is_special(ids[1])
    tokenizer.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, SentencePieceTokenizer) and loaded.special == tokenizer.special
    assert all(loaded.encode(text) == tokenizer.encode(text) for text in CORPUS)


def _gguf_from_sentencepiece(sp: sentencepiece.SentencePieceProcessor) -> dict[str, Any]:
    """What llama.cpp's converter writes for a sentencepiece vocabulary."""
    n = sp.get_piece_size()
    kind = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 5 if sp.is_unused(i) else 1 for i in range(n)]
    return {
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)], "tokenizer.ggml.token_type": kind,
        "tokenizer.ggml.bos_token_id": sp.bos_id(), "tokenizer.ggml.eos_token_id": sp.eos_id(),
    }  # fmt: skip


def test_sentencepiece_vocabulary_from_gguf(sp_models: dict[str, Path]) -> None:
    sp, _ = _spm(sp_models["bpe"])  # a GGUF "llama" vocabulary is sentencepiece BPE: pieces and scores
    tokenizer = tokenizer_from_gguf(_gguf_from_sentencepiece(sp))
    assert isinstance(tokenizer, SentencePieceTokenizer)
    assert (tokenizer.special.bos_id, tokenizer.special.eos_id, tokenizer.special.add_bos) == (1, 2, True)
    assert tokenizer.special.stop_ids == {2}  # </s>
    for text in CORPUS:
        assert tokenizer.encode(text) == sp.encode(text, add_bos=True)
        assert tokenizer.decode(tokenizer.encode(text)) == text


# ---------------------------------------------------------------- streaming


def _stream(tokenizer: Tokenizer, context: list[int], ids: list[int]) -> list[str]:
    decoder = StreamDecoder(tokenizer, context)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


def _check_stream(tokenizer: Tokenizer, ids: list[int], *, every_cut: bool = False) -> None:
    cuts = range(len(ids)) if every_cut else sorted({0, 1, len(ids) // 2, max(len(ids) - 1, 0)})
    for cut in cuts:
        context, rest = ids[:cut], ids[cut:]
        if tokenizer.decode(context).endswith("\ufffd"):
            continue  # a prompt never ends inside a character
        pieces = _stream(tokenizer, context, rest)
        assert "".join(pieces) == tokenizer.decode(ids)[len(tokenizer.decode(context)) :]
        assert not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("text", CORPUS)
def test_stream_decoder_byte_level(smollm: Tokenizer, text: str) -> None:
    ids = smollm.encode(text)
    _check_stream(smollm, ids)
    # Control tokens in the stream print nothing and do not disturb the rest.
    _check_stream(smollm, [1, *ids, 2, *ids])


def test_stream_decoder_holds_split_characters(smollm: Tokenizer, sp_models: dict[str, Path]) -> None:
    ids = smollm.encode("👩‍👩‍👧")
    assert len(ids) > 3  # the emoji and its joiners arrive as byte tokens
    pieces = _stream(smollm, [], ids)
    assert "".join(pieces) == "👩‍👩‍👧" and pieces.count("") >= 2
    # Every prompt/continuation split, with the decode window starting inside a character too.
    text = "Once upon a time 👩‍👩‍👧 went to 東京 and 🇫🇷, then home."
    for tokenizer in (smollm, _spm(sp_models["bpe"])[1], _spm(sp_models["unigram"])[1]):
        _check_stream(tokenizer, tokenizer.encode(text), every_cut=True)


@pytest.mark.parametrize("text", CORPUS)
def test_stream_decoder_sentencepiece(sp_model: Path, text: str) -> None:
    _, tokenizer = _spm(sp_model)
    _check_stream(tokenizer, tokenizer.encode(text))


def test_stream_decoder_keeps_the_leading_space(sp_model: Path) -> None:
    sp, tokenizer = _spm(sp_model)
    ids = tokenizer.encode("The small tokenizer learned")
    cut = next(k for k in range(len(ids)) if tokenizer.decode(ids[:k]) == "The small")
    assert sp.id_to_piece(ids[cut]).startswith("\u2581")
    pieces = _stream(tokenizer, ids[:cut], ids[cut:])
    assert pieces[0].startswith(" ") and "".join(pieces) == " tokenizer learned"


# ---------------------------------------------------------------- folders and errors


def test_hugging_face_folder(smollm: Tokenizer, tmp_path: Path) -> None:
    smollm.save(tmp_path)
    (tmp_path / "tokenizer_special.json").unlink()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "bos_token": {"content": "<|im_start|>"}}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.special == SpecialTokens(1, 2, frozenset({0, 2}), add_bos=True)
    assert tokenizer.encode("hi") == [1, *smollm.encode("hi")]


def test_meta_checkpoint_folder(sp_model: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes(sp_model.read_bytes())
    (tmp_path / "params.json").write_text("{}")
    tokenizer = load_tokenizer(tmp_path)
    assert isinstance(tokenizer, SentencePieceTokenizer)
    assert tokenizer.special == SpecialTokens(1, 2, frozenset({2}), add_bos=True)


def test_unusable_folders(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no tokenizer in"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_text("IQ== 0\nIg== 1\n")  # Llama 3's tiktoken format
    with pytest.raises(TokenizerError, match="tiktoken"):
        load_tokenizer(tmp_path)


def test_chat_template_from_folder(tmp_path: Path) -> None:
    assert chat_template_from_folder(tmp_path) is None
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert chat_template_from_folder(tmp_path) == "{{ messages }}"
    config.write_text(json.dumps({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}))
    assert chat_template_from_folder(tmp_path) == "D"
    (tmp_path / "chat_template.jinja").write_text("J")
    assert chat_template_from_folder(tmp_path) == "J"


_GPT2 = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"]}


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({}, "no tokenizer"),
        ({"tokenizer.ggml.model": "gpt2"}, "no tokenizer"),
        ({**_GPT2, "tokenizer.ggml.model": "rwkv"}, "'rwkv'"),
        ({**_GPT2, "tokenizer.ggml.pre": "glm4", "tokenizer.ggml.merges": ["a"]}, "'glm4'"),
        (_GPT2, "merges"),
        ({**_GPT2, "tokenizer.ggml.token_type": [1, 1]}, "differ in length"),
        ({**_GPT2, "tokenizer.ggml.model": "llama", "tokenizer.ggml.eos_token_id": 5}, "outside the vocabulary"),
    ],
)
def test_bad_gguf_tokenizer_metadata(metadata: dict[str, Any], message: str) -> None:
    with pytest.raises(TokenizerError, match=message):
        tokenizer_from_gguf(metadata)


def test_special_tokens_dict_round_trip() -> None:
    special = SpecialTokens(1, 2, frozenset({2, 0}), add_bos=False)
    assert SpecialTokens.from_dict(json.loads(json.dumps(special.to_dict()))) == special
    with pytest.raises(TokenizerError):
        SpecialTokens.from_dict({"bos_id": "1", "eos_id": 2, "stop_ids": [2], "add_bos": False})
    with pytest.raises(TokenizerError):
        SpecialTokens.from_dict({"bos_id": 1})
