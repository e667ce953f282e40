"""`llama perplexity`: windows, the figure against transformers' loss on the same tokens, KL divergence, the CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from llama_cli.cli import app
from llama_cli.errors import UsageError
from llama_cli.perplexity import kl_compare, kl_divergence, kl_summary, perplexity, top1_matches, windows

TEXT = (
    "The lighthouse stood at the end of the harbour wall for more than two hundred years. Its keepers "
    "lived in a small stone house beside it, trimming the wick at dusk and winding the clockwork that "
    "turned the lens. In winter the storms came in from the west, and the spray reached the lantern room "
    "itself. The last keeper left in 1964, when the light was automated; the house became a museum, and "
    "children now climb the spiral stairs to look out over the bay. On a clear day you can see the islands, "
    "the fishing boats heading out before dawn, and the ferry that crosses to the mainland twice a day. "
    "The town below grew up around the fish market, and many of its streets are still named after the "
    "boats that once worked from the quay: the Margaret, the Good Intent, the Brothers. "
) * 2

runner = CliRunner()


def test_windows_do_not_overlap_and_drop_a_lone_last_token() -> None:
    assert windows(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert windows(list(range(9)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # [8] predicts nothing
    with pytest.raises(UsageError):
        windows([1, 2, 3], 1)


@pytest.mark.real_model
def test_matches_transformers_loss_on_the_same_tokens(llm, hf_model) -> None:  # type: ignore[no-untyped-def]
    ids = llm.tokenizer.encode(TEXT)
    ctx = 128
    assert len(ids) > 2 * ctx  # several windows, the last one partial
    ours = perplexity(llm.model, ids, ctx)
    total, count = 0.0, 0
    with torch.inference_mode():
        for window in windows(ids, ctx):
            tokens = torch.tensor([window])
            loss = hf_model(input_ids=tokens, labels=tokens).loss.item()  # mean over len(window) - 1 predictions
            total += loss * (len(window) - 1)
            count += len(window) - 1
    assert ours.predicted == count and ours.windows == math.ceil(len(ids) / ctx)
    reference = math.exp(total / count)
    assert abs(ours.perplexity - reference) / reference < 0.005, (ours.perplexity, reference)


def test_cli_prints_perplexity_last_and_json(tiny_llm, tmp_path: Path, tiny_model_path: Path) -> None:  # type: ignore[no-untyped-def]
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    expected = perplexity(tiny_llm.model, tiny_llm.tokenizer.encode(TEXT), 96).perplexity
    result = runner.invoke(app, ["perplexity", str(text_file), "-m", str(tiny_model_path), "--ctx", "96", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"perplexity: \d+\.\d{4}", last)
    assert float(last.split()[1]) == pytest.approx(expected, abs=1e-4)
    assert "windows of 96" in result.stderr  # progress and the summary go to stderr

    data = runner.invoke(app, ["perplexity", str(text_file), "-m", str(tiny_model_path), "--ctx", "96", "--dtype", "float32", "--json"])
    record = json.loads(data.stdout)
    assert record["perplexity"] == pytest.approx(expected, rel=1e-6)
    assert record["ctx"] == 96 and record["windows"] == math.ceil(record["tokens"] / 96)


def test_cli_refuses_a_text_too_short_to_score(tmp_path: Path, tiny_model_path: Path) -> None:
    one = tmp_path / "one.txt"
    one.write_text("Hi", encoding="utf-8")
    result = runner.invoke(app, ["perplexity", str(one), "-m", str(tiny_model_path), "--dtype", "float32"])
    assert result.exit_code == 2
    assert result.stderr.startswith("llama: error:") and "at least two" in result.stderr


def test_kl_divergence_of_identical_logits_is_zero_and_of_known_distributions_is_exact() -> None:
    logits = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0)) * 4
    assert torch.equal(kl_divergence(logits, logits), torch.zeros(5))
    assert float(kl_divergence(logits, logits + 3.0).max()) < 1e-7  # a shift of every logit changes no probability (rounding aside)
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # 0.5108 nats
    assert kl_divergence(p.log(), q.log()).item() == pytest.approx(expected, rel=1e-6)
    assert kl_divergence(q.log(), p.log()).item() == pytest.approx(
        0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5), rel=1e-6
    )  # not symmetric
    three = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    other = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    assert kl_divergence(three.log(), other.log()).tolist() == pytest.approx((three * (three / other).log()).sum(-1).tolist(), rel=1e-6)
    assert top1_matches(three.log(), other.log()) == 2 and top1_matches(three.log(), other.flip(-1).log()) == 0


def test_kl_summary_mean_p99_max() -> None:
    kl = torch.arange(101, dtype=torch.float32) / 100  # 0.00, 0.01, ..., 1.00
    summary = kl_summary(kl)
    assert summary["mean"] == pytest.approx(0.5) and summary["max"] == pytest.approx(1.0) and summary["p99"] == pytest.approx(0.99)


def test_kl_compare_of_a_model_with_itself(tiny_llm) -> None:  # type: ignore[no-untyped-def]
    llm = tiny_llm
    ids = llm.tokenizer.encode(TEXT)[:150]
    compared = kl_compare(llm.model, llm.model, ids, 64)
    assert compared.positions == compared.result.predicted == len(ids) - 3  # windows of 64, 64, 22: one fewer prediction each
    assert compared.top1_agreement == 1.0 and float(compared.kl.max()) < 1e-6
    assert compared.result.perplexity == pytest.approx(perplexity(llm.model, ids, 64).perplexity, rel=1e-5)
    assert compared.reference.perplexity == pytest.approx(compared.result.perplexity, rel=1e-6)


@pytest.mark.real_model  # the quantized path against float32: a random model's flat logits would not hold top-1 >= 90%
def test_cli_kl_divergence_text_and_json(tmp_path: Path, default_model_path: Path) -> None:
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    args = ["perplexity", str(text_file), "-m", str(default_model_path), "--ctx", "128", "--kl-divergence"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "perplexity",
        "reference perplexity",
        "mean KL",
        "p99 KL",
        "max KL",
        "top-1 agreement",
    ]
    assert lines[1].endswith("(float32)") and "mean KL so far" in result.stderr
    record = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert record["reference_path"] == "float32" and record["positions"] == record["predicted_tokens"]
    assert 0 <= record["kl_mean"] <= record["kl_p99"] <= record["kl_max"] and 0.9 <= record["top1_agreement"] <= 1
    ppl = float(lines[0].split()[1])
    assert record["perplexity"] == pytest.approx(ppl, abs=1e-4)
