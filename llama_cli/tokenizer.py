"""Tokenizers: text <-> token ids for LLaMA-family models, from a GGUF or a model folder.

One interface, two implementations: `BPETokenizer` wraps a Hugging Face `tokenizers` pipeline
(byte-level BPE built from a GGUF's `tokenizer.ggml.model = gpt2` vocabulary, or any folder's
`tokenizer.json`); `SentencePieceTokenizer` wraps `sentencepiece` (a Meta `tokenizer.model`, or a
GGUF's `tokenizer.ggml.model = llama` vocabulary rebuilt as a model proto).

References: llama.cpp `src/llama-vocab.cpp` (pre-tokenizer regexes per `tokenizer.ggml.pre`,
special-token partitioning, end-of-generation tokens); sentencepiece `sentencepiece_model.proto`;
meta-llama `llama/tokenizer.py` (keyword-only `bos`, an explicit set of stop tokens).
Chat formatting lives in chat_template.py, not here.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece
from tokenizers import Tokenizer as Backend
from tokenizers import decoders

from .detokenize import StreamDecoder as StreamDecoder  # noqa: PLC0414 (re-exported: generation streams through it)
from .detokenize import byte_level_text
from .errors import TokenizerError
from .gguf_metadata import read_gguf_metadata
from .gguf_vocab import CONTROL, PRE_TOKENIZERS, USER_DEFINED, bpe_backend, known_regexes, piece_types, sentencepiece_processor
from .textio import read_json_object

SPECIAL_FILE = "tokenizer_special.json"
# Control tokens that end a turn or a document, by their text (llama.cpp's end-of-generation list).
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>", "<|end|>", "</s>", "<EOT>")


@dataclass(frozen=True)
class SpecialTokens:
    bos_id: int | None
    eos_id: int | None
    stop_ids: frozenset[int]  # eos and every end-of-turn token: generation stops on any of them
    add_bos: bool  # prepend BOS to a raw prompt (chat templates write their own)

    def to_dict(self) -> dict[str, Any]:
        return {"bos_id": self.bos_id, "eos_id": self.eos_id, "stop_ids": sorted(self.stop_ids), "add_bos": self.add_bos}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpecialTokens:
        bos, eos, stops, add_bos = (d.get(key, "missing") for key in ("bos_id", "eos_id", "stop_ids", "add_bos"))
        ids_ok = all(i is None or type(i) is int for i in (bos, eos)) and isinstance(stops, list) and all(type(i) is int for i in stops)
        if not ids_ok or type(add_bos) is not bool:
            raise TokenizerError(f"bad special-token record {dict(d)!r}: delete the model cache and retry")
        return cls(bos, eos, frozenset(stops), add_bos)


class Tokenizer(ABC):
    """Text <-> ids. Keyword-only flags; `special` says which ids start and stop a sequence."""

    special: SpecialTokens

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str, *, bos: bool | None = None, parse_special: bool = False) -> list[int]:
        """Ids for `text`; `bos=None` follows `special.add_bos`. With `parse_special`, control tokens
        written in the text ("<|im_start|>") become their ids (rendered chat templates); without, they
        are tokenized as plain text (raw prompts)."""

    @abstractmethod
    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str: ...

    @abstractmethod
    def piece(self, token_id: int) -> str:
        """Readable text of one token for display (" Paris"; bytes that are not text as "<0xE2>")."""

    @abstractmethod
    def is_special(self, token_id: int) -> bool:
        """True for control tokens, which are never printed."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write this tokenizer into `folder` so that `load_tokenizer(folder)` gives it back."""

    def _bos(self, ids: list[int], bos: bool | None) -> list[int]:
        wanted = self.special.add_bos if bos is None else bos
        return [self.special.bos_id, *ids] if wanted and self.special.bos_id is not None else ids

    def _save_special(self, folder: Path) -> None:
        (folder / SPECIAL_FILE).write_text(json.dumps(self.special.to_dict(), indent=1) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _rust_panics_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null while `tokenizers` runs: a Rust panic prints its own
    lines there before Python sees the exception. (A line another thread writes meanwhile is lost:
    `llama serve`'s log, so only a tokenizer with a regex of unknown behaviour is run this way.)"""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# The pre-tokenizer regexes of llama.cpp's table (gguf_vocab.py), in both spellings: none makes the
# Rust library panic (tried on 200,000-character runs of spaces, digits, letters, newlines,
# punctuation and CJK).
KNOWN_REGEXES = known_regexes()


def _regexes(state: Any) -> Iterator[str]:
    """Every regex in a `tokenizers` component's JSON state (Split pre-tokenizers, Replace normalizers)."""
    if isinstance(state, dict):
        pattern = state.get("pattern")
        if isinstance(pattern, dict) and isinstance(pattern.get("Regex"), str):
            yield pattern["Regex"]
        for value in state.values():
            yield from _regexes(value)
    elif isinstance(state, list):
        for value in state:
            yield from _regexes(value)


class BPETokenizer(Tokenizer):
    """A `tokenizers` pipeline: byte-level BPE from a GGUF, or any `tokenizer.json`."""

    def __init__(self, backend: Backend, special: SpecialTokens, source: str = "the tokenizer") -> None:
        self._backend, self.special, self.source = backend, special, source  # source: where it was read from, for errors
        added = backend.get_added_tokens_decoder()
        self._added, self._control = frozenset(added), frozenset(i for i, t in added.items() if t.special)
        self._byte_level = isinstance(backend.decoder, decoders.ByteLevel)
        # A regex from a tokenizer.json that is not one of llama.cpp's may backtrack until the Rust
        # library panics; only then is stderr silenced around each encode (see _rust_panics_silenced).
        parts = [part for part in (backend.normalizer, backend.pre_tokenizer) if part is not None]
        self._may_panic = any(regex not in KNOWN_REGEXES for part in parts for regex in _regexes(json.loads(part.__getstate__())))

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, bos: bool | None = None, parse_special: bool = False) -> list[int]:
        # Special added tokens are matched only when asked; user-defined ones always (as llama.cpp does).
        self._backend.encode_special_tokens = not parse_special
        try:
            with _rust_panics_silenced() if self._may_panic else contextlib.nullcontext():
                ids = self._backend.encode(text, add_special_tokens=False).ids
        except BaseException as error:
            # A tokenizer.json's pre-tokenizer regex that backtracks without end makes the Rust
            # library panic; its PanicException derives from BaseException, past every handler.
            if type(error).__name__ != "PanicException":
                raise
            reason = str(error).splitlines()[0] if str(error) else "a panic"
            raise TokenizerError(f"{self.source} failed on this text (its pre-tokenizer's regex?): {reason}") from None
        return self._bos(ids, bos)

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special)

    def piece(self, token_id: int) -> str:
        token = self._backend.id_to_token(token_id)
        if token is None:
            return f"<unknown id {token_id}>"
        return byte_level_text(token) if self._byte_level and token_id not in self._added else token

    def is_special(self, token_id: int) -> bool:
        return token_id in self._control

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._backend.save(str(folder / "tokenizer.json"))
        self._save_special(folder)


class SentencePieceTokenizer(Tokenizer):
    """`sentencepiece` on a model proto. As llama.cpp does, user-defined pieces in the text (always)
    and control pieces (when asked) are split out first, and each stretch of text between them is
    encoded on its own, with its own leading space."""

    def __init__(self, processor: sentencepiece.SentencePieceProcessor, special: SpecialTokens) -> None:
        self._sp, self.special = processor, special
        pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        self._control = frozenset(i for i in range(len(pieces)) if processor.is_control(i))
        marked = {i for i in range(len(pieces)) if i in self._control or processor.is_unknown(i)}
        user = {p for p, kind in zip(pieces, piece_types(processor.serialized_model_proto())) if kind == USER_DEFINED}
        self._split_special = _alternation(user | {pieces[i] for i in marked})
        self._split_plain = _alternation(user)
        spaced = next((i for i, p in enumerate(pieces) if p.startswith("\u2581") and len(p) > 1), None)
        # Whether decode drops the leading space of the first piece (add_dummy_prefix).
        self._strips_first_space = spaced is not None and not processor.decode([spaced]).startswith(" ")

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str, *, bos: bool | None = None, parse_special: bool = False) -> list[int]:
        split = self._split_special if parse_special else self._split_plain
        if split is None:
            return self._bos(self._sp.encode(text), bos)
        ids: list[int] = []
        for k, part in enumerate(split.split(text)):  # text, piece, text, piece, ..., text
            if k % 2:
                ids.append(self._sp.piece_to_id(part))
            elif part:
                ids.extend(self._sp.encode(part))
        return self._bos(ids, bos)

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        n = self._sp.get_piece_size()
        ids = [i for i in ids if 0 <= i < n]
        if skip_special:
            return self._sp.decode([i for i in ids if i not in self._control])
        out: list[str] = []  # control pieces are written out; the text after one keeps its leading space
        for control, group in itertools.groupby(ids, key=self._control.__contains__):
            run = list(group)
            if control:
                out += [self._sp.id_to_piece(i) for i in run]
                continue
            text = self._sp.decode(run)
            keep_space = out and self._strips_first_space and self._sp.id_to_piece(run[0]).startswith("\u2581")
            out.append(" " + text if keep_space else text)
        return "".join(out)

    def piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._control

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tokenizer.model").write_bytes(self._sp.serialized_model_proto())
        self._save_special(folder)


def _alternation(names: set[str]) -> re.Pattern[str] | None:
    """A regex matching any of `names`, longest first (so "<s>" does not cut "<s_x>"), captured for re.split."""
    names = names - {""}
    return re.compile("(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + ")") if names else None


# ---------------------------------------------------------------- from GGUF metadata


def _stop_ids(eos_ids: Sequence[int | None], lookup: Callable[[str], int | None], is_control: Callable[[int], bool]) -> frozenset[int]:
    named = (lookup(name) for name in END_OF_TURN)
    return frozenset(i for i in eos_ids if i is not None) | {i for i in named if i is not None and is_control(i)}


def tokenizer_from_gguf(metadata: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer a GGUF describes; `metadata` as `gguf_metadata.read_gguf_metadata` returns it.

    Supports `tokenizer.ggml.model` "gpt2" (byte-level BPE) and "llama" (sentencepiece BPE).
    BOS is added to raw prompts as `tokenizer.ggml.add_bos_token` says, and by default for
    sentencepiece and Llama 3 vocabularies (as llama.cpp does).
    """
    kind, tokens = metadata.get("tokenizer.ggml.model"), metadata.get("tokenizer.ggml.tokens")
    if not kind or not tokens:
        raise TokenizerError("the GGUF has no tokenizer (tokenizer.ggml.model/tokens): use a folder with tokenizer.json or tokenizer.model")
    types = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise TokenizerError("GGUF tokenizer.ggml.token_type and tokenizer.ggml.tokens differ in length: the file is corrupt")
    ids = {k: metadata.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "eot", "eom")}
    if bad := {k: i for k, i in ids.items() if i is not None and not 0 <= i < len(tokens)}:
        raise TokenizerError(f"GGUF special token ids {bad} are outside the vocabulary of {len(tokens)}: the file is corrupt")
    index = {t: i for i, t in reversed(list(enumerate(tokens)))}
    stops = _stop_ids([ids["eos"], ids["eot"], ids["eom"]], index.get, lambda i: types[i] == CONTROL)
    add_bos = metadata.get("tokenizer.ggml.add_bos_token")
    if kind == "gpt2":
        merges = metadata.get("tokenizer.ggml.merges")
        if not merges:
            raise TokenizerError("the GGUF's byte-level BPE vocabulary has no tokenizer.ggml.merges: the file is corrupt")
        pre = metadata.get("tokenizer.ggml.pre") or "default"
        backend = bpe_backend(tokens, types, merges, pre)
        special = SpecialTokens(ids["bos"], ids["eos"], stops, bool(add_bos) if add_bos is not None else PRE_TOKENIZERS[pre].add_bos)
        return BPETokenizer(backend, special)
    if kind == "llama":
        special = SpecialTokens(ids["bos"], ids["eos"], stops, True if add_bos is None else bool(add_bos))
        return SentencePieceTokenizer(sentencepiece_processor(metadata, tokens, types), special)
    raise TokenizerError(f"unsupported GGUF tokenizer model {kind!r} (tokenizer.ggml.model); supported: gpt2, llama")


# ---------------------------------------------------------------- from a model folder


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, error=TokenizerError) if path.is_file() else {}


def _as_ids(value: Any) -> list[int]:
    return [value] if type(value) is int else [i for i in value if type(i) is int] if isinstance(value, list) else []


def _special_from_folder(
    folder: Path, lookup: Callable[[str], int | None], is_control: Callable[[int], bool], probe_bos: Callable[[int], bool]
) -> SpecialTokens:
    """bos/eos from generation_config.json, config.json, then tokenizer_config.json's token names."""
    tok_cfg, gen, cfg = (_read_json(folder / name) for name in ("tokenizer_config.json", "generation_config.json", "config.json"))

    def named(key: str) -> list[int]:
        token = tok_cfg.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        found = lookup(token) if isinstance(token, str) else None
        return [found] if found is not None else []

    bos = [*_as_ids(gen.get("bos_token_id")), *_as_ids(cfg.get("bos_token_id")), *named("bos_token")]
    eos = [*_as_ids(gen.get("eos_token_id")), *_as_ids(cfg.get("eos_token_id")), *named("eos_token")]
    bos_id, eos_id = (bos or [None])[0], (eos or [None])[0]
    add_bos = tok_cfg.get("add_bos_token")
    add_bos = add_bos if isinstance(add_bos, bool) else bos_id is not None and probe_bos(bos_id)
    return SpecialTokens(bos_id, eos_id, _stop_ids(eos, lookup, is_control), add_bos)


COUNT_CHUNK = 1 << 20  # characters per piece when counting the tokens of a long text


def count_tokens(tokenizer: Tokenizer, text: str, *, bos: bool | None = None) -> int:
    """len(tokenizer.encode(text, bos=bos)) in bounded memory: `tokenizers` keeps offsets and strings for
    every token (3 GB for 20 MB of text), so a long text is encoded in pieces that end at a single
    line break between two non-space characters, where byte-level BPE pre-tokenizers split anyway.
    sentencepiece returns bare ids (and would add a word-start marker to every piece): one call."""
    if not isinstance(tokenizer, BPETokenizer) or len(text) <= COUNT_CHUNK:
        return len(tokenizer.encode(text, bos=bos))
    total, start = 0, 0
    while start < len(text):
        end = len(text) if len(text) - start <= COUNT_CHUNK else _piece_end(text, start + COUNT_CHUNK)
        total += len(tokenizer.encode(text[start:end], bos=False))
        start = end
    return total + len(tokenizer.encode("", bos=bos))  # the BOS token, when one is added


def _piece_end(text: str, at: int) -> int:
    """The first position at or after `at` just after a single line break between non-space characters (else the end)."""
    found = _LINE_START.search(text, at)
    return found.end() if found else len(text)


_LINE_START = re.compile(r"(?<=\S)\n(?=\S)")  # one line break between two non-space characters


def load_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer in a model folder: our cache (tokenizer.json or tokenizer.model plus
    tokenizer_special.json), a Hugging Face folder (tokenizer.json, else tokenizer.model, with its
    config files), or a Meta LLaMA 1/2 checkpoint (sentencepiece tokenizer.model: BOS added)."""
    folder = Path(folder)
    cached = folder / SPECIAL_FILE
    if (folder / "tokenizer.json").is_file():
        try:
            backend = Backend.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise TokenizerError(f"cannot read {folder / 'tokenizer.json'}: {exc}") from exc
        if cached.is_file():
            return BPETokenizer(backend, SpecialTokens.from_dict(_read_json(cached)), str(folder / "tokenizer.json"))
        controls = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}

        def post_processor_adds(bos: int) -> bool:
            return backend.encode("a", add_special_tokens=True).ids[:1] == [bos]

        special = _special_from_folder(folder, backend.token_to_id, controls.__contains__, post_processor_adds)
        return BPETokenizer(backend, special, str(folder / "tokenizer.json"))
    path = folder / "tokenizer.model"
    if not path.is_file():
        raise TokenizerError(f"no tokenizer in {folder}: expected tokenizer.json or tokenizer.model (a Hugging Face or Meta model folder)")
    try:
        sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:
        with path.open("rb") as file:
            tiktoken = re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+\r?\n", file.readline(512)) is not None
        if tiktoken:
            raise TokenizerError(f"{path} is a Llama 3 tiktoken vocabulary (unsupported): use a Hugging Face folder or a GGUF") from exc
        raise TokenizerError(f"cannot read {path} as a sentencepiece model: {exc}") from exc
    if cached.is_file():
        return SentencePieceTokenizer(sp, SpecialTokens.from_dict(_read_json(cached)))

    def lookup(piece: str) -> int | None:  # piece_to_id answers unk_id for an unknown piece
        i = sp.piece_to_id(piece)
        return i if i != sp.unk_id() or piece == sp.id_to_piece(i) else None

    special = _special_from_folder(folder, lookup, sp.is_control, lambda bos: True)
    if special.bos_id is None and special.eos_id is None:  # a Meta checkpoint: no config files, ids from the model
        bos, eos = (i if i >= 0 else None for i in (sp.bos_id(), sp.eos_id()))
        special = SpecialTokens(bos, eos, _stop_ids([eos], lookup, sp.is_control), bos is not None)
    return SentencePieceTokenizer(sp, special)


def chat_template_from_folder(folder: Path) -> str | None:
    """The folder's chat template: chat_template.jinja (which transformers prefers), else
    tokenizer_config.json "chat_template" (a string, or a list of {name, template}: "default")."""
    jinja = Path(folder) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = _read_json(Path(folder) / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def load_vocabulary(path: Path) -> tuple[Tokenizer, str | None]:
    """The tokenizer and chat template of the model at `path`, without reading its weights (no torch).

    `path` as `weights.load_checkpoint` takes it: a GGUF file (a vocab-only one too: only its
    key/values are read), a model folder (its tokenizer files, else its one GGUF), or a file in one.
    """
    path = Path(path).expanduser()
    if path.is_file() and (path.suffix.lower() == ".gguf" or _starts_with_gguf_magic(path)):
        return _vocabulary_from_gguf(path)
    folder = path if path.is_dir() else path.parent
    if not folder.is_dir():
        raise TokenizerError(f"no model at {path}: the path does not exist")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        ggufs = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
        if len(ggufs) == 1:
            return _vocabulary_from_gguf(ggufs[0])
        if ggufs:
            raise TokenizerError(f"{folder} holds several GGUF files ({', '.join(p.name for p in ggufs[:5])}); name the one to use")
    return load_tokenizer(folder), chat_template_from_folder(folder)


def _vocabulary_from_gguf(path: Path) -> tuple[Tokenizer, str | None]:
    metadata = read_gguf_metadata(path)
    template = metadata.get("tokenizer.chat_template")
    try:
        return tokenizer_from_gguf(metadata), template if isinstance(template, str) else None
    except TokenizerError as exc:
        raise TokenizerError(f"{path}: {exc}") from None


def _starts_with_gguf_magic(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(4) == b"GGUF"
    except OSError:
        return False
