"""`llama finetune`, LoRA adapters and `llama merge`: which tokens carry the loss, the adapter
round trip on the default model (merged logits == adapter-applied logits), resume after Ctrl-C,
--full, and one-line errors for bad data.

Most runs fine-tune a tiny model pretrained here in seconds; the default model (SmolLM2-135M)
is fine-tuned for two short steps only. The measured before/after effect of a real fine-tune is
bench/finetune_format.py's job, not a test's.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from llama_cli.cli import app
from llama_cli.config import ModelConfig
from llama_cli.kv_cache import KVCache
from llama_cli.lora import LoRAConfig, LoRALinear, adapter_tensors, add_lora, load_adapter, merge_lora
from llama_cli.model import Transformer

REPO = Path(__file__).resolve().parent.parent
FORMAT_DATA = REPO / "data" / "finetune_format.jsonl"
HELD_OUT = REPO / "data" / "finetune_format_heldout.jsonl"
LLAMA = [sys.executable, "-m", "llama_cli"]
FAST = ["--threads", "1"]
runner = CliRunner()


def invoke(*args: str | Path):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [*map(str, args), *FAST])


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model pretrained for a few steps on Python's documentation (context 256)."""
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("tiny-base")
    (root / "corpus.txt").write_text("\n\n".join(topics[k] for k in sorted(topics)), encoding="utf-8")
    result = invoke("train", root / "corpus.txt", "-o", root / "model", "--ctx", "256", "--max-steps", "20", "--eval-every", "20")
    assert result.exit_code == 0, result.stderr
    return root / "model"


def metrics(out: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_only_on_assistant_tokens(default_model_path: Path) -> None:
    from llama_cli.chat_template import template_text
    from llama_cli.finetune import encode_conversation
    from llama_cli.trainer import IGNORE
    from llama_cli.weights import load_checkpoint

    checkpoint = load_checkpoint(default_model_path)
    tokenizer, template = checkpoint.tokenizer, template_text(checkpoint.chat_template, "auto")
    messages = [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"},
        {"role": "user", "content": "And?"}, {"role": "assistant", "content": "Bye."},
    ]  # fmt: skip
    example = encode_conversation(messages, tokenizer, template, "test")  # type: ignore[arg-type]
    taught = [t for t in example.targets if t != IGNORE]
    # Each reply and the <|im_end|> (id 2) that closes it, plus the template's newline after it.
    assert tokenizer.decode(taught, skip_special=False) == "Hello there!<|im_end|>\nBye.<|im_end|>\n"
    assert taught.count(2) == 2
    assert tokenizer.decode(example.inputs, skip_special=False).startswith(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM"
    )


def test_lora_layer_starts_as_the_base_and_merges_exactly() -> None:
    torch.manual_seed(0)
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, ffn_dim=128, context_length=32)
    model = Transformer(config).double()
    tokens = torch.randint(0, 97, (2, 16))
    before = model(tokens, cache=None).detach()
    names = add_lora(model, LoRAConfig(rank=4, alpha=8, targets=("wq", "wv", "w2")), seed=1)
    assert len(names) == 6 and all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [f"{n}.lora_{x}" for n in names for x in "ab"]
    torch.testing.assert_close(model(tokens, cache=None), before)  # B starts at zero
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_b" in name:
                p.normal_(0, 0.1)
    adapted = model(tokens, cache=None).detach()
    assert (adapted - before).abs().max() > 1e-2
    assert set(adapter_tensors(model)) == {f"{n}.lora_{x}" for n in names for x in "ab"}
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(tokens, cache=None), adapted, atol=1e-10, rtol=1e-10)


@pytest.mark.real_model
def test_adapter_round_trip_on_the_default_model(default_model_path: Path, llm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Train two steps, then: adapter via load(adapter=) == `llama merge` output == the unmerged LoRA layers."""
    from llama_cli import load
    from llama_cli.api import build_model
    from llama_cli.weights import load_checkpoint

    val = tmp_path / "val.jsonl"
    val.write_text("".join(HELD_OUT.read_text().splitlines(keepends=True)[:2]))
    out = tmp_path / "adapter"
    result = invoke("finetune", FORMAT_DATA, "-o", out, "-m", default_model_path, "--val", val, "--max-steps", "2",
                    "--batch-size", "2", "--lr", "0.01", "--warmup", "0", "--lora-rank", "4", "--lora-targets", "wq,wv,w2")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    adapter = load_adapter(out)
    assert (adapter.config.rank, adapter.config.targets) == (4, ("wq", "wv", "w2")) and len(adapter.tensors) == 30 * 3 * 2
    assert [r["step"] for r in metrics(out)] == [2] and metrics(out)[0]["val_loss"] is not None

    merged_dir = tmp_path / "merged"
    merged_run = runner.invoke(app, ["merge", str(out), "-o", str(merged_dir)])  # the base model comes from adapter.json
    assert merged_run.exit_code == 0, merged_run.stderr
    assert (
        f"wrote {merged_dir}" in merged_run.stderr and "is unchanged" in merged_run.stderr
    )  # what was written, not "merged into the base"

    ids = llm.encode_prompt("What is the capital of Peru?", chat=True)
    tokens = torch.tensor([ids])

    def logits(model: torch.nn.Module) -> torch.Tensor:
        cache = KVCache(model)  # type: ignore[arg-type]
        cache.ensure(1, len(ids))
        with torch.no_grad():
            return model(tokens, 0, cache=cache)

    base = logits(llm.model)
    applied = logits(load(default_model_path, dtype="float32", adapter=out).model)
    merged = logits(load(merged_dir, dtype="float32").model)
    checkpoint = load_checkpoint(default_model_path)
    unmerged = build_model(checkpoint, torch.float32, torch.device("cpu"))
    add_lora(unmerged, adapter.config)
    with torch.no_grad():
        params = dict(unmerged.named_parameters())
        for name, tensor in adapter.tensors.items():
            params[name].copy_(tensor)
        layered = unmerged(tokens, cache=None)  # the LoRA layers as they trained, no cache
    assert (applied - base).abs().max() > 0.5  # the adapter changes the model
    torch.testing.assert_close(merged, applied, atol=1e-5, rtol=0)
    torch.testing.assert_close(layered, applied, atol=2e-3, rtol=0)

    generated = invoke(
        "generate", "-m", default_model_path, "--adapter", out, "--chat", "-t", "0", "-n", "8", "What is the capital of Peru?"
    )
    assert generated.exit_code == 0, generated.stderr
    assert (
        generated.stdout.strip()
        == runner.invoke(
            app, ["generate", "-m", str(merged_dir), "--chat", "-t", "0", "-n", "8", "What is the capital of Peru?"]
        ).stdout.strip()
    )


def test_finetune_resume_after_ctrl_c_matches(tiny_base: Path, tmp_path: Path) -> None:
    common = ["-m", str(tiny_base), "--max-steps", "30", "--log-every", "1", "--eval-every", "10", "--save-every", "100", *FAST]
    whole = runner.invoke(app, ["finetune", str(FORMAT_DATA), "-o", str(tmp_path / "whole"), *common])
    assert whole.exit_code == 0, whole.stderr
    out = tmp_path / "stopped"
    process = subprocess.Popen([*LLAMA, "finetune", str(FORMAT_DATA), "-o", str(out), *common], stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("step 8 "):
            process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    assert 8 <= len(metrics(out)) < 30 and (out / "adapter.safetensors").is_file()
    resumed = invoke("finetune", "-o", out, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    expected, got = metrics(tmp_path / "whole"), metrics(out)
    assert [(r["step"], r["train_loss"], r["val_loss"]) for r in got] == [(r["step"], r["train_loss"], r["val_loss"]) for r in expected]


def test_full_finetune_writes_a_standalone_model(tiny_base: Path, tmp_path: Path) -> None:
    from llama_cli.weights import load_checkpoint

    out = tmp_path / "full"
    result = invoke("finetune", FORMAT_DATA, "-o", out, "-m", tiny_base, "--full", "--max-steps", "3", "--eval-every", "3")
    assert result.exit_code == 0, result.stderr
    before, after = load_checkpoint(tiny_base).weights, load_checkpoint(out).weights
    assert set(before) == set(after) and not torch.equal(before["layers.0.attention.wq.weight"], after["layers.0.attention.wq.weight"])
    assert invoke("generate", "-m", out, "--chat", "-t", "0", "-n", "4", "Hi").exit_code == 0


@pytest.mark.parametrize(
    ("lines", "extra", "code", "needles"),
    [
        ([], [], 1, ["data.jsonl is empty"]),
        (["", "  "], [], 1, ["data.jsonl is empty"]),
        (['{"prompt": "a", "completion": "b"}', '{"prompt": "a", "completion": "b"', ""], [], 1, ["line 2", "not valid json"]),
        (['{"prompt": "a", "completion": "b"}', "", '{"question": "a"}'], [], 1, ["line 3", '"messages"']),
        (['{"messages": [{"role": "robot", "content": "x"}]}'], [], 1, ["line 1", "message 1"]),
        (['{"messages": [{"role": "user", "content": "x"}]}'], [], 1, ["line 1", "no assistant message"]),
        (['["a list"]'], [], 1, ["line 1", "expected a json object"]),
        (['{"prompt": "a", "completion": "' + "word " * 400 + '"}'] * 2, [], 1, ["line 1", "longer than 256"]),
        (['{"prompt": "a", "completion": "b"}'] * 2, ["--max-len", "1000"], 2, ["--max-len 1000", "context (256"]),
        (['{"prompt": "a", "completion": "b"}'], [], 1, ["at least 2 examples"]),
        (['{"prompt": "a", "completion": "b"}'] * 2, ["--lora-targets", "wz"], 2, ["unknown --lora-targets wz"]),
    ],
)
def test_bad_finetune_data_is_one_clear_line(
    tiny_base: Path, tmp_path: Path, lines: list[str], extra: list[str], code: int, needles: list[str]
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(line + "\n" for line in lines))
    result = invoke("finetune", data, "-o", tmp_path / "out", "-m", tiny_base, "--max-steps", "1", *extra)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code and len(errors) == 1 and errors[0].startswith("llama: error:"), result.stderr
    for needle in needles:
        assert needle.lower() in errors[0].lower(), errors[0]


def test_bad_adapters_are_one_clear_line(tiny_base: Path, tmp_path: Path, default_model_path: Path) -> None:
    missing = invoke("generate", "-m", tiny_base, "--adapter", tmp_path / "nowhere", "Hi")
    assert missing.exit_code == 1 and "no adapter at" in missing.stderr
    out = tmp_path / "tiny-adapter"
    assert invoke("finetune", FORMAT_DATA, "-o", out, "-m", tiny_base, "--max-steps", "1", "--eval-batches", "1").exit_code == 0
    other = runner.invoke(app, ["merge", str(out), "-o", str(tmp_path / "merged"), "-m", str(default_model_path)])
    lines = [line for line in other.stderr.splitlines() if line.strip()]
    assert other.exit_code == 1 and len(lines) == 1 and "trained on another model" in lines[0], other.stderr


def test_a_refused_resume_leaves_the_run_as_it_was(tmp_path: Path) -> None:
    # The changed setting is refused before finetune.json is written (it used to record it, refusing every later resume).
    from dataclasses import asdict

    from llama_cli.errors import UsageError
    from llama_cli.finetune import FINETUNE_FILE, resolve
    from llama_cli.train_settings import LoopSettings

    run = {"data": "x.jsonl", "loop": asdict(LoopSettings(lr=1e-4))}
    (tmp_path / FINETUNE_FILE).write_text(json.dumps({"settings": run}))
    with pytest.raises(UsageError, match=r"^resume with different settings: lr 0\.5 \(checkpoint: 0\.0001\)"):
        resolve({}, {"lr": 0.5}, tmp_path, resume=True)
    assert resolve({}, {"max_steps": 7}, tmp_path, resume=True).loop == LoopSettings(lr=1e-4, max_steps=7)  # max_steps may change
