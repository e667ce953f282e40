"""A GGUF's vocabulary rebuilt as a tokenizer backend, the way llama.cpp tokenizes it.

`tokenizer.ggml.model = gpt2`: byte-level BPE in Hugging Face `tokenizers`, with the pre-tokenizer
that `tokenizer.ggml.pre` names. llama.cpp splits text with a list of regexes applied in turn,
each cutting the pieces the previous one left, matched and unmatched stretches alike kept as
pieces; that is a `tokenizers` Sequence of Split(behavior="isolated"), then the byte-level map.
`tokenizer.ggml.model = llama`: a sentencepiece BPE model proto holding the GGUF's pieces and scores.

Proven against llama.cpp's test-tokenizer-0 suite (tests/test_tokenizer_suite.py) for the
pre-tokenizers it has vocabularies for: default, gpt-2, mpt, starcoder, refact, command-r,
llama-bpe, qwen2, qwen35, deepseek-llm, deepseek-coder, falcon, and sentencepiece (llama-spm,
phi-3). The other names share a regex with one of those, except tekken (Mistral Nemo) and
gpt-4o/llama4, which use their tokenizer.json regex (llama.cpp rewrites it for std::regex) and
are not covered by the suite.

References: llama.cpp `src/llama-vocab.cpp` (`llm_tokenizer_bpe`: regexes per pre-tokenizer type;
`llama_vocab::impl::load`: the names, ignore_merges, add_bos), sentencepiece `sentencepiece_model.proto`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sentencepiece
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from .errors import TokenizerError

# GGUF token_type values (the same numbers as sentencepiece's piece types).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"  # llama.cpp's case-insensitive 's 't ...
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN35 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# Tekken (Mistral Nemo) and GPT-4o (Llama 4): the tokenizer.json regexes, which llama.cpp rewrites for std::regex.
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS + r"?|[^\r\n\p{L}\p{N}]?"
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    + _CONTRACTIONS
    + r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# DeepSeek LLM: letters as llama.cpp lists them (cased scripts), then punctuation, trailing space, CJK, digits.
_DEEPSEEK_LETTERS = (
    "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d"
    "\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5"
    "\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
    "\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc"
    "\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126"
    "\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee"
    "\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17"
    "\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"


@dataclass(frozen=True)
class PreTokenizer:
    regexes: tuple[str, ...]  # applied in turn, each splitting every piece the previous ones left
    ignore_merges: bool = False  # a word that is itself in the vocabulary is one token (Llama 3)
    add_bos: bool = False  # BOS before a raw prompt when the GGUF does not say (tokenizer.ggml.add_bos_token)


_LLAMA3_PRE = PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)
_GPT2_PRE = PreTokenizer((_GPT2,))
_DIGITS_PRE = PreTokenizer((r"\p{N}", _GPT2))  # each digit alone, then GPT-2's
_QWEN2_PRE = PreTokenizer((_QWEN2,))

# tokenizer.ggml.pre -> how llama.cpp pre-tokenizes (llama-vocab.cpp).
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]")),
    **dict.fromkeys(["gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4", "trillion", "granite-docling"], _GPT2_PRE),
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"], _LLAMA3_PRE),
    **dict.fromkeys(["dbrx", "smaug-bpe"], PreTokenizer((_LLAMA3,))),
    **dict.fromkeys(["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"], _DIGITS_PRE),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan"], _QWEN2_PRE),
    "qwen35": PreTokenizer((_QWEN35,)),
    "deepseek-llm": PreTokenizer(
        # llama.cpp's \s+$, begun only where a run of whitespace begins: tried from every space of a
        # long run before a digit it took 195 s for 200,000 spaces (the same matches, in linear time).
        ("[\r\n]", _DEEPSEEK_LETTERS, "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+", r"(?<!\s)\s+$", _CJK, r"\p{N}+")
    ),
    "deepseek-coder": PreTokenizer(("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}")),
    "falcon": PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]")),
    "tekken": PreTokenizer((_TEKKEN,), ignore_merges=True, add_bos=True),
    **dict.fromkeys(["gpt-4o", "llama4"], PreTokenizer((_GPT4O,))),
}


# Hugging Face tokenizer.json files spell the contractions `(?i:'s|'t|...)` where llama.cpp lists
# each case: the same regexes under another spelling (Llama 3's, Qwen 2's, GPT-4o's).
HF_CONTRACTIONS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"


def known_regexes() -> frozenset[str]:
    """Every regex of the table, also as a tokenizer.json spells it."""
    table = {regex for spec in PRE_TOKENIZERS.values() for regex in spec.regexes}
    return frozenset(table | {regex.replace(_CONTRACTIONS, HF_CONTRACTIONS) for regex in table})


def pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    """The `tokenizers` pre-tokenizer for llama.cpp's `tokenizer.ggml.pre` name; TokenizerError if unknown."""
    spec = PRE_TOKENIZERS.get(pre)
    if spec is None:
        raise TokenizerError(f"unsupported GGUF pre-tokenizer {pre!r} (tokenizer.ggml.pre); supported: {', '.join(sorted(PRE_TOKENIZERS))}")
    splits = [pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in spec.regexes]
    return pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def bpe_backend(tokens: Sequence[str], types: Sequence[int], merges: Sequence[str], pre: str) -> Backend:
    """Byte-level BPE over the GGUF's tokens and merges; control tokens become special added
    tokens (matched in text only when asked), user-defined ones plain added tokens (always matched)."""
    splitter = pre_tokenizer(pre)
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        vocab[token if token not in vocab else f"<duplicate token {i}>"] = i
    pairs = [(a, b) for a, _, b in (m.partition(" ") for m in merges) if a in vocab and b in vocab and a + b in vocab]
    backend = Backend(models.BPE(vocab=vocab, merges=pairs, ignore_merges=PRE_TOKENIZERS[pre].ignore_merges))
    backend.pre_tokenizer = splitter
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL and t])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED and t])
    return backend


def _proto(fields: list[tuple[int, Any]]) -> bytes:
    """Protocol-buffer encoding of (field number, value) pairs: int -> varint, float -> fixed32, bytes/str -> length-delimited."""

    def varint(n: int) -> bytes:
        n &= (1 << 64) - 1
        out = bytearray()
        while n > 0x7F:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        return bytes([*out, n])

    out = bytearray()
    for number, value in fields:
        if isinstance(value, float):
            out += varint(number << 3 | 5) + struct.pack("<f", value)
        elif isinstance(value, (bool, int)):
            out += varint(number << 3) + varint(int(value))
        else:
            data = value.encode("utf-8") if isinstance(value, str) else value
            out += varint(number << 3 | 2) + varint(len(data)) + data
    return bytes(out)


def piece_types(model_proto: bytes) -> list[int]:
    """The type of every piece in a serialized sentencepiece ModelProto (field 1: pieces; in each,
    field 3: type, NORMAL when absent). Needed for user-defined pieces, which the Python API
    cannot tell apart."""

    def fields(data: bytes) -> list[tuple[int, int, Any]]:
        out, pos = [], 0
        while pos < len(data):
            key, pos = varint(data, pos)
            wire = key & 7
            if wire == 0:
                value, pos = varint(data, pos)
            elif wire == 2:
                n, pos = varint(data, pos)
                value, pos = data[pos : pos + n], pos + n
            elif wire in (1, 5):
                value, pos = None, pos + (8 if wire == 1 else 4)
            else:
                raise TokenizerError(f"unreadable sentencepiece model (protobuf wire type {wire})")
            out.append((key >> 3, wire, value))
        return out

    def varint(data: bytes, pos: int) -> tuple[int, int]:
        n = shift = 0
        while True:
            if pos >= len(data):
                raise TokenizerError("unreadable sentencepiece model (a truncated protobuf)")
            byte = data[pos]
            n, pos, shift = n | (byte & 0x7F) << shift, pos + 1, shift + 7
            if byte < 0x80:
                return n, pos

    pieces = [value for number, wire, value in fields(model_proto) if number == 1 and wire == 2]
    return [next((v for n, w, v in fields(piece) if n == 3 and w == 0), NORMAL) for piece in pieces]


def sentencepiece_processor(
    metadata: Mapping[str, Any], tokens: Sequence[str], types: Sequence[int]
) -> sentencepiece.SentencePieceProcessor:
    """A sentencepiece BPE model (sentencepiece_model.proto) holding the GGUF's pieces and scores.

    sentencepiece wants exactly one unknown piece: the one `tokenizer.ggml.unknown_token_id`
    names (Phi-3 marks its <unk> as control), else the first of that type; other pieces typed
    unknown (Phi-3's [PAD...] fillers) become control pieces, which text never produces.
    """
    scores = metadata.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    if len(scores) != len(tokens):
        raise TokenizerError("GGUF tokenizer.ggml.scores and tokenizer.ggml.tokens differ in length: the file is corrupt")
    unk = metadata.get("tokenizer.ggml.unknown_token_id")
    if not (type(unk) is int and 0 <= unk < len(tokens)):
        unk = next((i for i, k in enumerate(types) if k == UNKNOWN), None)
    types = [UNKNOWN if i == unk else CONTROL if k == UNKNOWN else k for i, k in enumerate(types)]
    pieces = [_proto([(1, t), (2, float(s)), (3, k)]) for t, s, k in zip(tokens, scores, types)]
    byte_fallback = {f"<0x{b:02X}>" for b in range(256)} <= {t for t, k in zip(tokens, types) if k == BYTE}
    trainer = _proto([(3, 2), (4, len(tokens)), (35, byte_fallback)])  # model_type BPE, vocab_size, byte_fallback
    normalizer = [(1, "identity"), (3, bool(metadata.get("tokenizer.ggml.add_space_prefix", True))), (4, False), (5, True)]
    if charsmap := metadata.get("tokenizer.ggml.precompiled_charsmap"):
        normalizer.append((2, bytes(b & 0xFF for b in charsmap)))
    model = _proto([*((1, p) for p in pieces), (2, trainer), (3, _proto(normalizer))])
    try:
        return sentencepiece.SentencePieceProcessor(model_proto=model)
    except RuntimeError as exc:
        raise TokenizerError(f"cannot build a sentencepiece model from the GGUF vocabulary: {exc}") from exc
