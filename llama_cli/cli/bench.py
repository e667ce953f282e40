"""Measurement commands: `llama bench` (speed, like llama-bench) and `llama perplexity FILE`.

Figures and progress go to stderr; the result (the table, the perplexity line, or JSON) to stdout.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated

import typer

from ..errors import UsageError
from ..textio import write_out
from .bundles import bundled
from .errors import handles_errors
from .inputs import read_documents
from .loader import ModelOptions, load_model
from .options import JsonDocOpt, model_bundle


@handles_errors
@bundled(model_options=model_bundle(ctx=False))
def bench(
    *,
    prompt_tokens: Annotated[
        int, typer.Option("--prompt-tokens", "-p", help="Prompt length for the prompt-processing test (0 = skip).")
    ] = 512,
    gen_tokens: Annotated[int, typer.Option("--gen-tokens", "-n", help="Tokens to generate in the generation test (0 = skip).")] = 128,
    repeats: Annotated[int, typer.Option("--repeats", "-r", help="Timed runs of each test, after one warm-up run.")] = 5,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object on stdout instead of the table.")] = False,
    model_options: ModelOptions,
) -> None:
    """Prompt processing (ppN) and generation (tgN) speed in tokens/s: median of repeats, with the spread.

    Like llama.cpp's llama-bench: ppN prefills an N-token prompt into an empty cache; tgN
    generates N tokens greedily after a one-token prompt. Compare runs made side by side, as
    ratios: bench/compare.py runs llama.cpp and transformers on the same file.

    [b]Examples[/b]

      llama bench

      llama bench -p 1000 -n 64 --threads 2

      llama bench --dtype float32 --json
    """
    if prompt_tokens < 0 or gen_tokens < 0 or (prompt_tokens == 0 and gen_tokens < 2):
        raise UsageError("give --prompt-tokens > 0 or --gen-tokens > 1 (0 skips a test)")
    if repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {repeats}")
    import torch

    from ..benchmark import bench as run_bench

    llm = load_model(model_options)
    context = llm.context_length
    if prompt_tokens + 1 > context or gen_tokens + 1 > context:
        raise UsageError(f"tests longer than the model's context of {context} tokens")
    results = run_bench(llm.model, llm.tokenizer, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, repeats=repeats)
    config = llm.model.config
    info = {
        "model": llm.checkpoint.source.name,
        "quantization": llm.checkpoint.quantization,
        "params": config.n_params,
        "path": llm.path_label,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
    }
    if json_output:
        write_out(json.dumps({**info, "results": [m.as_dict() for m in results]}) + "\n")
        return
    rows = ["| model | quant | params | path | threads | test | t/s (median) | spread |", "|---|---|---|---|---|---|---:|---|"]
    for m in results:
        rows.append(
            f"| {info['model']} | {info['quantization']} | {config.n_params / 1e6:.1f} M | {info['path']} | {info['threads']} "
            f"| {m.test} | {m.median:.2f} | {min(m.rates):.2f}-{max(m.rates):.2f} |"
        )
    write_out("\n".join(rows) + "\n")


@handles_errors
@bundled(model_options=model_bundle(ctx=False))
def perplexity(
    *,
    file: Annotated[
        str | None, typer.Argument(help="Text file to score; '-' or absent reads stdin.", metavar="FILE", show_default=False)
    ] = None,
    ctx: Annotated[
        int, typer.Option("--ctx", help="Window length in tokens: the text is scored in non-overlapping windows of this size.")
    ] = 512,
    kl_divergence: Annotated[
        bool,
        typer.Option(
            "--kl-divergence",
            help=(
                "Also run the float32 reference of the same file on the same windows; report KL(reference || this path) and top-1 "
                "agreement."
            ),
        ),
    ] = False,
    json_output: JsonDocOpt = False,
    model_options: ModelOptions,
) -> None:
    """Perplexity of the model over a text, in non-overlapping windows of --ctx tokens.

    Progress goes to stderr; the last line on stdout is `perplexity: X.XXXX`. Each window starts
    from an empty context, so the figure depends on --ctx: compare runs with the same value.
    `--dtype float32` runs the exact reference model (the default fast path rounds activations to
    bfloat16).

    `--kl-divergence` loads the file twice, the path --dtype picks (the fast path by default) and
    the float32 reference, scores the same windows with both, and prints both perplexities, the
    mean, 99th-percentile and maximum KL divergence of the reference's next-token distribution
    from this path's, and top-1 agreement: the figures llama.cpp users compare quantizations by.

    [b]Examples[/b]

      llama perplexity wiki.test.raw

      llama perplexity --ctx 1024 --dtype float32 book.txt

      cat notes.txt | llama perplexity --json

      llama perplexity -m model.Q4_K_M.gguf --kl-divergence wiki.test.raw
    """

    from ..perplexity import perplexity as score

    text = read_documents([file] if file else None)  # empty, binary or non-UTF-8 text: one-line errors before loading
    llm = load_model(model_options)
    window = min(ctx, llm.context_length)
    ids = llm.tokenizer.encode(text)
    interactive = sys.stderr.isatty()

    def progress(done: int, total: int, running: float) -> None:
        line = f"[{done}/{total}] windows of {window} tokens, perplexity so far {running:.4f}"
        print(("\r" + line) if interactive else line, end="" if interactive and done < total else "\n", file=sys.stderr, flush=True)

    if kl_divergence:
        _kl_divergence(
            llm,
            load_model(dataclasses.replace(model_options, dtype="float32")),
            ids,
            window,
            json_output=json_output,
            interactive=interactive,
        )
        return
    result = score(llm.model, ids, window, progress=progress)
    if json_output:
        write_out(json.dumps({"model": llm.checkpoint.source.name, "path": llm.path_label, **result.as_dict()}) + "\n")
        return
    print(
        f"{result.tokens} tokens in {result.windows} window{'s' if result.windows != 1 else ''} of {window}, {result.seconds:.1f} s "
        f"({llm.path_label})",
        file=sys.stderr,
    )
    write_out(f"perplexity: {result.perplexity:.4f}\n")


def _kl_divergence(llm, reference, ids: list[int], window: int, *, json_output: bool, interactive: bool) -> None:  # type: ignore[no-untyped-def]
    from ..perplexity import kl_compare, kl_summary

    def progress(done: int, total: int, running: float, kl: float) -> None:
        line = f"[{done}/{total}] windows of {window} tokens, perplexity so far {running:.4f}, mean KL so far {kl:.6f}"
        print(("\r" + line) if interactive else line, end="" if interactive and done < total else "\n", file=sys.stderr, flush=True)

    compared = kl_compare(llm.model, reference.model, ids, window, progress=progress)
    if json_output:
        record = {"model": llm.checkpoint.source.name, "path": llm.path_label, "reference_path": reference.path_label, **compared.as_dict()}
        write_out(json.dumps(record) + "\n")
        return
    result, summary = compared.result, kl_summary(compared.kl)
    print(
        f"{result.tokens} tokens in {result.windows} window{'s' if result.windows != 1 else ''} of {window}, {result.seconds:.1f} s "
        f"({llm.path_label} against {reference.path_label})",
        file=sys.stderr,
    )
    write_out(
        f"perplexity: {result.perplexity:.4f} ({llm.path_label})\n"
        f"reference perplexity: {compared.reference.perplexity:.4f} ({reference.path_label})\n"
        f"mean KL: {summary['mean']:.6f}\n"
        f"p99 KL: {summary['p99']:.6f}\n"
        f"max KL: {summary['max']:.6f}\n"
        f"top-1 agreement: {100 * compared.top1_agreement:.2f}% ({compared.top1} of {compared.positions} positions)\n"
    )
