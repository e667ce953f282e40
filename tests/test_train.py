"""`llama train` on a tiny model and real English text: learning, exact resume after Ctrl-C,
two-process torchrun with a data shard per rank, and one-line errors for bad data.

The corpus is Python's own documentation prose shipped in the standard library
(`pydoc_data.topics`, ~465k characters, 79 topics), written out as one text file per topic.
Every run uses one thread: the tiny model's operations are too small to gain from more, and
these machines are shared.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from llama_cli.cli import app
from llama_cli.config import ModelConfig
from llama_cli.kv_cache import KVCache
from llama_cli.model import Transformer

LLAMA = [sys.executable, "-m", "llama_cli"]
FAST = ["--threads", "1"]
METRIC_KEYS = {"step", "train_loss", "val_loss", "lr", "tokens_per_s"}
runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pydoc_data.topics import topics

    folder = tmp_path_factory.mktemp("pydoc-topics")
    for name, text in topics.items():
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return folder


def train(*args: str | Path):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["train", *map(str, args), *FAST])


def metrics(out: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_cache_free_forward_matches_cached_decoding() -> None:
    """The training path (no KV cache, causal attention) computes what generation computes."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, ffn_dim=128, context_length=64)).double()
    tokens = torch.randint(0, 97, (2, 40))
    free = model(tokens, cache=None)
    cache = KVCache(model)
    cache.ensure(2, 40)
    with torch.no_grad():
        cached = model(tokens, 0, cache=cache)
    torch.testing.assert_close(free.detach(), cached, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="context length"):
        Transformer(model.config)(torch.zeros(1, 65, dtype=torch.long), cache=None)


def test_tiny_model_learns_real_text(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    result = train(corpus, "-o", out, "--preset", "tiny", "--max-steps", "300")
    assert result.exit_code == 0, result.stderr
    baseline = json.loads((out / "train.json").read_text())["corpus"]["unigram_baseline"]
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(10, 301, 10)) and all(set(r) == METRIC_KEYS for r in rows)
    vals = [r["val_loss"] for r in rows if r["val_loss"] is not None]
    assert len(vals) == 6 and vals[-1] < vals[0]
    # "Well below": a unigram model is ~5.1 nats/token here; a 300-step tiny model gets to ~3.7.
    assert vals[-1] < baseline - 1.0, (vals, baseline)
    assert sum(r["train_loss"] for r in rows[-5:]) / 5 < baseline - 1.0
    for name in ("llama.json", "model.safetensors", "tokenizer.model", "tokenizer_special.json", "train_state.pt"):
        assert (out / name).is_file(), name
    hint = result.stderr.rsplit("llama: try: ", 1)[1].strip()  # the command train suggests runs as printed
    assert hint.startswith("llama generate "), hint
    sample = runner.invoke(app, [*shlex.split(hint)[1:], "--seed", "1"])
    assert sample.exit_code == 0, sample.stderr
    assert len(sample.stdout.split()) > 3


def test_resume_after_ctrl_c_reproduces_the_uninterrupted_run(corpus: Path, tmp_path: Path) -> None:
    common = ["--max-steps", "60", "--log-every", "1", "--eval-every", "20", "--save-every", "50", *FAST]
    whole = train(corpus, "-o", tmp_path / "whole", *common)
    assert whole.exit_code == 0, whole.stderr

    # A real Ctrl-C (SIGINT) mid-run: the step in flight finishes, a checkpoint is saved, exit 130.
    out = tmp_path / "stopped"
    process = subprocess.Popen([*LLAMA, "train", str(corpus), "-o", str(out), *common], stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith("step 25 "):
            process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130, "".join(lines)
    stopped_at = len(metrics(out))
    assert 25 <= stopped_at < 60 and "--resume" in lines[-1], "".join(lines)

    resumed = runner.invoke(app, ["train", "-o", str(out), "--resume", *FAST])  # data and settings come from the run
    assert resumed.exit_code == 0, resumed.stderr
    expected, got = metrics(tmp_path / "whole"), metrics(out)
    assert [r["step"] for r in got] == list(range(1, 61))
    for a, b in zip(expected, got):
        assert (a["step"], a["train_loss"], a["val_loss"], a["lr"]) == (b["step"], b["train_loss"], b["val_loss"], b["lr"])


def test_corpus_reads_files_folders_and_jsonl(tmp_path: Path) -> None:
    from llama_cli.data import read_corpus

    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_text("first")
    (tmp_path / "docs" / "sub" / "b.md").write_text("second")
    (tmp_path / "docs" / "image.png").write_bytes(b"\x89PNG")  # not a text suffix: skipped in folders
    (tmp_path / "docs" / ".hidden.txt").write_text("hidden")
    (tmp_path / "more.jsonl").write_text('{"text": "third"}\n\n{"text": ""}\n{"text": "fourth", "id": 4}\n')
    docs = read_corpus([tmp_path / "docs", tmp_path / "more.jsonl"])
    assert [d.text for d in docs] == ["first", "second", "third", "fourth"]
    assert docs[3].source.endswith("more.jsonl line 4")


def test_pretrain_batches_come_from_each_ranks_own_shard() -> None:
    from llama_cli.distributed import Dist
    from llama_cli.train import PretrainTask
    from llama_cli.trainer import LoopSettings

    stream = torch.arange(10_000)  # token value == position, so a batch shows where it was read
    config = ModelConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=10_000, ffn_dim=64, context_length=32)
    seen = []
    for rank in (0, 1):
        task = PretrainTask(stream, stream[:200], config, None, None, LoopSettings(batch_size=8), Dist(rank, 2, rank, torch.device("cpu")))  # type: ignore[arg-type]
        x, y = task.batch(step=1, micro=0)
        assert torch.equal(y[:, :-1], x[:, 1:])
        seen.append(set(x.flatten().tolist()) | set(y.flatten().tolist()))
    assert max(seen[0]) < 5_000 <= min(seen[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(corpus: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Two CPU processes on this machine, talking gloo over the loopback interface only."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    train_args = ["train", str(corpus), "-o", str(out), "--max-steps", "20", "--log-every", "5", "--eval-every", "10", *FAST, *extra]
    command = [sys.executable, *launcher, "-m", "llama_cli", *train_args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def ddp_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ddp") / "model"
    result = torchrun(corpus, out)
    assert result.returncode == 0, result.stderr
    return out, result.stderr


def test_torchrun_two_cpu_processes_each_on_its_own_shard(ddp_run: tuple[Path, str]) -> None:
    out, stderr = ddp_run
    # The two ranks share one stderr pipe, so their lines may interleave: find the phrases, not lines.
    shards = sorted(re.findall(r"trains on tokens (\S+) of", stderr))
    assert len(shards) == 2, stderr  # one line from each rank, naming its own share
    (a0, a1), (b0, b1) = (tuple(int(n.replace(",", "")) for n in s.split("-")) for s in shards)
    assert a0 == 0 and a1 == b0 < b1  # disjoint, and together the whole training stream
    rows = metrics(out)  # written by rank 0 alone
    assert [r["step"] for r in rows] == [5, 10, 15, 20] and rows[-1]["val_loss"] < rows[0]["train_loss"]
    assert json.loads((out / "train.json").read_text())["corpus"]["world_size"] == 2
    assert runner.invoke(app, ["generate", "-m", str(out), "-t", "0", "-n", "5", "The"]).exit_code == 0


def test_fsdp_trains_like_ddp(corpus: Path, ddp_run: tuple[Path, str], tmp_path: Path) -> None:
    """Sharding weights, gradients and optimizer state changes where the numbers live, not the result."""
    out = tmp_path / "fsdp"
    result = torchrun(corpus, out, "--fsdp")
    assert result.returncode == 0, result.stderr
    for a, b in zip(metrics(ddp_run[0]), metrics(out)):
        assert a["step"] == b["step"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert runner.invoke(app, ["generate", "-m", str(out), "-t", "0", "-n", "5", "The"]).exit_code == 0


@pytest.fixture()
def bad_files(tmp_path: Path) -> Path:
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("  \n\n")
    (tmp_path / "binary.txt").write_bytes(b"text\x00\x01")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "broken.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n{"text": three}\n')
    (tmp_path / "notext.jsonl").write_text('{"text": "one"}\n{"body": "two"}\n')
    from pydoc_data.topics import topics

    (tmp_path / "short.txt").write_text("".join(topics[k] for k in sorted(topics))[:4000])  # ~1,600 tokens
    (tmp_path / "line.txt").write_text(topics["pass"].splitlines()[0])
    (tmp_path / "nofiles").mkdir()
    (tmp_path / "nofiles" / "image.png").write_bytes(b"\x89PNG")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (["empty.txt"], 1, ["empty.txt is empty"]),
        (["blank.txt"], 1, ["blank.txt is empty"]),
        (["binary.txt"], 1, ["binary.txt looks binary"]),
        (["latin1.txt"], 1, ["not valid utf-8"]),
        (["broken.jsonl"], 1, ["broken.jsonl line 3", "not valid json"]),
        (["notext.jsonl"], 1, ["notext.jsonl line 2", '"text"']),
        (["missing.txt"], 1, ["missing.txt: no such file"]),
        (["nofiles"], 1, ["no .txt"]),
        (["short.txt", "--ctx", "1024"], 1, ["too small for a context of 1024"]),
        (["line.txt"], 1, ["--vocab-size 512 does not fit this corpus"]),
        (["short.txt", "--ctx", "0"], 2, ["context_length must be positive"]),
        (["short.txt", "--dim", "64", "--heads", "3"], 2, ["--heads 3"]),
        (["short.txt", "--preset", "huge"], 2, ["unknown --preset"]),
        (["--resume"], 2, ["holds no training run"]),
    ],
)
def test_bad_training_data_is_one_clear_line(
    bad_files: Path, args: list[str], code: int, needles: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(bad_files)
    result = runner.invoke(app, ["train", *args, "-o", str(bad_files / "out"), *FAST])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("llama: error:"), result.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


def test_out_folder_holding_a_model_needs_resume(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert train(corpus, "-o", out, "--max-steps", "2", "--eval-every", "1").exit_code == 0
    again = train(corpus, "-o", out, "--max-steps", "2")
    assert again.exit_code == 2 and "--resume" in again.stderr
    changed = runner.invoke(app, ["train", "-o", str(out), "--resume", "--lr", "0.5", *FAST])
    assert changed.exit_code == 2 and "--lr 0.5" in changed.stderr
    finished = runner.invoke(app, ["train", "-o", str(out), "--resume", *FAST])  # the CLI says it, in its flags
    notice = f"llama: {out} is already at step 2 of --max-steps 2; raise --max-steps"
    assert finished.exit_code == 0 and notice in finished.stderr, finished.stderr
