"""Pretraining data: read a corpus, train its tokenizer, pack it into one token stream, sample windows.

- `read_corpus` takes text files, folders of them and JSONL files with a "text" field, and
  refuses what it cannot use (missing, empty, binary, not UTF-8, malformed JSONL) with one line
  naming the file and, for JSONL, the line.
- `train_tokenizer` trains a sentencepiece model (BPE or unigram, byte fallback, LLaMA's settings:
  no normalisation, digits split, whitespace kept) on the corpus, in memory.
- `pack` concatenates the documents as `BOS text EOS BOS text EOS ...`; `split_holdout` keeps
  the tail for validation; `shard_bounds` gives each distributed rank its own contiguous part.
- `sample_windows` draws a batch of (input, target) windows as a pure function of a seed, so a
  resumed run draws exactly the batches an uninterrupted one would have.

References: karpathy/nanoGPT (random windows of a packed stream), karpathy/llama2.c
(`tinystories.py` sentencepiece training), Meta's tokenizer.model trainer settings.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sentencepiece
import torch

from .errors import LlamaError, literal
from .textio import decode_text
from .tokenizer import SentencePieceTokenizer, SpecialTokens, Tokenizer

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text", ".jsonl")  # what a folder contributes
TokenizerKind = Literal["bpe", "unigram"]
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2  # ids our trained tokenizers give <unk>, <s>, </s>


class DataError(LlamaError):
    """Training data that cannot be used; the message names the file (and line)."""


@dataclass(frozen=True)
class Document:
    source: str  # "notes.txt", "corpus.jsonl line 7"
    text: str


# ---------------------------------------------------------------- reading


def decode_file(path: Path) -> str:
    """A file's text; empty, binary and non-UTF-8 files are errors."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    if not data.strip():
        raise DataError(f"{path} is empty")
    return decode_text(data, str(path), error=DataError)


def jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object is an error."""
    lines = decode_file(path).splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path} line {number}: not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files named, plus the text files under each folder named (sorted, recursive, hidden ones skipped)."""
    if not paths:
        raise DataError("no training data: give text files, folders or JSONL files")
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )  # fmt: skip
            if not found:
                raise DataError(f"{path}: no {', '.join(TEXT_SUFFIXES)} files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return files


def read_corpus(paths: Sequence[str | Path]) -> list[Document]:
    """Every document: one per text file, one per JSONL line (its "text" field)."""
    documents: list[Document] = []
    for path in expand_paths(paths):
        if path.suffix.lower() != ".jsonl":
            documents.append(Document(str(path), decode_file(path)))
            continue
        count = 0
        for number, record in jsonl_records(path):
            text = record.get("text")
            if not isinstance(text, str):
                raise DataError(
                    f'{path} line {number}: expected an object with a "text" string (keys: {", ".join(sorted(record)) or "none"})'
                )
            if text.strip():
                documents.append(Document(f"{path} line {number}", text))
                count += 1
        if not count:
            raise DataError(f'{path} has no documents (no non-empty "text" fields)')
    return documents


# ---------------------------------------------------------------- tokenizer


def _sentences(documents: Iterable[Document], max_chars: int) -> Iterator[str]:
    # sentencepiece trains on lines; very long lines are skipped by it, so cut them first.
    for doc in documents:
        for line in doc.text.splitlines():
            for start in range(0, len(line), max_chars):
                if line[start : start + max_chars].strip():
                    yield line[start : start + max_chars]


def train_tokenizer(
    documents: Sequence[Document], *, vocab_size: int, kind: TokenizerKind = "bpe", seed_sentences: int = 2_000_000, threads: int = 1
) -> SentencePieceTokenizer:
    """A sentencepiece tokenizer trained on the corpus (in memory), ids 0-2 = <unk> <s> </s>.

    Bytes it never saw in training decode through byte fallback (<0x0A> for a newline), so any
    text round-trips. BOS is added to raw prompts, as for LLaMA 1/2.
    """
    if kind not in ("bpe", "unigram"):
        raise DataError(f"unknown tokenizer kind {kind!r}; choose bpe or unigram")
    model = io.BytesIO()
    options = {
        "model_type": kind, "vocab_size": vocab_size, "byte_fallback": True, "character_coverage": 0.9995,
        "unk_id": UNK_ID, "bos_id": BOS_ID, "eos_id": EOS_ID, "pad_id": -1,
        "normalization_rule_name": "identity", "remove_extra_whitespaces": False, "add_dummy_prefix": True,
        "split_digits": True, "allow_whitespace_only_pieces": True, "max_sentence_length": 8192,
        "input_sentence_size": seed_sentences, "shuffle_input_sentence": True, "num_threads": threads,
        "minloglevel": 2,  # sentencepiece logs to stderr at length otherwise
    }  # fmt: skip
    try:
        sentencepiece.SentencePieceTrainer.train(sentence_iterator=_sentences(documents, 4096), model_writer=model, **options)
    except RuntimeError as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        message = lines[-1].split("] ", 1)[-1]  # drop sentencepiece's "INTERNAL: src/file.cc(123) [check]" prefix
        if "Vocabulary size" in message or "vocab_size" in message:
            raise DataError.naming(f"{{vocab_size}} {vocab_size} does not fit this corpus: {literal(message)}") from None
        raise DataError(f"sentencepiece could not train a tokenizer on this corpus: {message}") from None
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    return SentencePieceTokenizer(processor, SpecialTokens(BOS_ID, EOS_ID, frozenset({EOS_ID}), add_bos=True))


# ---------------------------------------------------------------- packing, splitting, sampling


def pack(documents: Iterable[Document], tokenizer: Tokenizer) -> torch.Tensor:
    """One stream (int64) of `BOS doc EOS` for every document, in order."""
    bos, eos = tokenizer.special.bos_id, tokenizer.special.eos_id
    ids: list[int] = []
    for doc in documents:
        ids += ([bos] if bos is not None else []) + tokenizer.encode(doc.text, bos=False) + ([eos] if eos is not None else [])
    return torch.tensor(ids, dtype=torch.int64)


def fingerprint(tokens: torch.Tensor) -> str:
    """A short hash of a token stream: a resumed run checks it sees the same data."""
    return hashlib.sha256(tokens.numpy().tobytes()).hexdigest()[:16]


def split_holdout(tokens: torch.Tensor, fraction: float, seq_len: int, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation): the last `fraction` of the stream is held out (at least one window)."""
    if not 0 < fraction < 1:
        raise DataError.naming(f"{{val_fraction}} must be between 0 and 1, got {fraction}")
    window = seq_len + 1
    n_val = max(window, int(len(tokens) * fraction))
    need = n_val + world * window
    if len(tokens) < need:
        ranks = f" for {world} ranks" if world > 1 else ""
        raise DataError.naming(
            f"the corpus is only {len(tokens):,} tokens: too small for a context of {seq_len}{ranks} "
            f"(need at least {need:,}: one window per rank plus a held-out window); add text or lower {{context_length}}"
        )
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]


def shard_bounds(n_tokens: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of rank's contiguous share of an n-token stream: the ranks' shares are disjoint."""
    per_rank = n_tokens // world
    return rank * per_rank, (rank + 1) * per_rank if rank < world - 1 else n_tokens


def batch_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed from the run's seed and (rank, step, micro-step): batches need no saved RNG state."""
    digest = hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_windows(stream: torch.Tensor, batch: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` random windows of the stream: inputs (B, T) and targets (B, T), the inputs shifted by one."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len, (batch,), generator=generator)
    offsets = torch.arange(seq_len + 1)
    windows = stream[starts[:, None] + offsets]  # (B, T+1)
    return windows[:, :-1], windows[:, 1:]


def eval_windows(stream: torch.Tensor, seq_len: int, count: int) -> torch.Tensor:
    """Up to `count` non-overlapping windows (N, T+1) spread evenly over the stream (the same every time)."""
    available = (len(stream) - 1) // seq_len
    n = max(1, min(count, available))
    starts = torch.linspace(0, len(stream) - seq_len - 1, n).long()
    return stream[starts[:, None] + torch.arange(seq_len + 1)]


def unigram_baseline(train: torch.Tensor, val: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of the validation tokens under the training set's token frequencies
    (add-one smoothed): what a model that ignores context can reach."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1
    log_p = counts.log() - counts.sum().log()
    return float(-log_p[val].mean())
