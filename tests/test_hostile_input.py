"""Hostile input to the loader and the engine: one clear error, never a hang, a crash or garbage.

In-process, with files crafted in fixtures, except the cases that once took the whole machine
(sizes, threads, big inputs, a FIFO, template attacks): those run the command in a child under
an address-space and CPU limit (limits.py), so a regression fails the test instead of the machine.
Part of the bad-input matrix (tests/test_bad_input.py holds the rest).
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import pytest
import torch
from limits import run_limited
from test_weights import TINY, random_weights, write_gguf

from llama_cli import load
from llama_cli.api import set_threads
from llama_cli.errors import ModelFormatError, UsageError
from llama_cli.weights import load_checkpoint

pytestmark = pytest.mark.bad_input


def test_nan_weights_are_an_error_not_nul_bytes(tmp_path: Path) -> None:
    weights = random_weights(TINY)
    weights["layers.0.feed_forward.w2.weight"] = torch.full_like(weights["layers.0.feed_forward.w2.weight"], float("nan"))
    llm = load(write_gguf(tmp_path / "nan.gguf", TINY, weights), cache=False)
    with pytest.raises(ModelFormatError, match="NaN or infinite"):
        llm.generate([5, 6, 7], max_tokens=3, temperature=0)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with pytest.raises(ModelFormatError, match="not a regular file"):
        load_checkpoint(fifo)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("llama.rope.freq_base", 0.0, "rope_theta must be a positive number"),
        ("llama.rope.freq_base", -10000.0, "rope_theta must be a positive number"),
        ("llama.attention.layer_norm_rms_epsilon", -1.0, "norm_eps must be a positive number"),
        ("llama.context_length", 2**40, "context_length 1099511627776 is beyond any real model"),
    ],
)
def test_impossible_hyperparameters_are_refused(tmp_path: Path, key: str, value: float, message: str) -> None:
    def add(writer: gguf.GGUFWriter) -> None:
        if isinstance(value, int):
            writer.add_uint64(key, value)
        else:
            writer.add_float32(key, value)

    path = write_gguf(tmp_path / "odd.gguf", TINY, random_weights(TINY), extra=add)
    with pytest.raises(ModelFormatError, match=message):
        load_checkpoint(path, cache=False)


def test_thread_counts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="at least 1"):
        set_threads(0)
    with pytest.raises(UsageError, match="threads on"):
        set_threads(100_000)
    monkeypatch.setenv("LLAMA_THREADS", "abc")
    with pytest.raises(UsageError, match="not a whole number"):
        set_threads(None)


TEMPLATE_ATTACKS = {
    "{{ 'a' * 10**10 }}": "'*' would build 10,000,000,000 items",
    "{{ ([0] * 10**9) | length }}": "'*' would build 1,000,000,000 items",
    "{% for i in range(10**9) %}{% endfor %}": "the number 1e+09 is beyond",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}": "rendering ran past",
    "{{ lipsum(10**7) }}": "lipsum(10000000, max=100) is beyond",
    "{{ 'x' | center(10**10) }}": "the number 1e+10 is beyond",
    "{{ '{:>10000000000}'.format('') }}": "the format width 1e+10 is beyond",
    "{{ '%10000000000s' % 'x' }}": "the format width 1e+10 is beyond",
    "{{ 2 ** 1000000000 }}": "'**' would build a number of",
    "{% set s = namespace(t='x') %}{% for i in range(40) %}{% set s.t = s.t + s.t %}{% endfor %}": "'+' would build",
    "{% macro f(x) %}{{ f(x) }}{% endmacro %}{{ f(1) }}": "RecursionError",
    "{{ 1/0 }}": "ZeroDivisionError",
}


def test_chat_templates_are_bounded_in_memory_and_time(tmp_path: Path) -> None:
    """Templates come from model files: each attack is one clear error, inside 1 GB and a minute
    (a child process under setrlimit, so a regression fails here instead of taking the machine)."""
    import json
    import resource
    import subprocess
    import sys

    script = tmp_path / "render.py"
    script.write_text(
        "import json, sys, llama_cli.chat_template as ct\n"
        "ct.TEMPLATE_SECONDS = 2.0\n"
        "for source in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        ct.render_chat(source, [{'role': 'user', 'content': 'hi'}])\n"
        "        print('rendered')\n"
        "    except ct.ChatTemplateError as error:\n"
        "        print(error)\n"
    )

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        resource.setrlimit(resource.RLIMIT_CPU, (60, 60))

    result = subprocess.run(
        [sys.executable, str(script), json.dumps(list(TEMPLATE_ATTACKS))], capture_output=True, text=True, preexec_fn=limits, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == len(TEMPLATE_ATTACKS)
    for line, expected in zip(lines, TEMPLATE_ATTACKS.values(), strict=True):
        assert line.startswith("chat template failed to render (the chat template") and expected in line, line


def test_a_kv_cache_bigger_than_memory_is_refused_with_what_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cli.memory

    llm = load(write_gguf(tmp_path / "tiny.gguf", TINY, random_weights(TINY)), cache=False)
    monkeypatch.setattr(llama_cli.memory, "available_bytes", lambda *args: 1_000_000)
    expected = r"a KV cache of 64 sequences x \d+ positions needs .* at most \d+ sequences fit"
    with pytest.raises(llama_cli.memory.MemoryLimitError, match=expected):
        llm.generate([5, 6, 7], max_tokens=50, samples=64, temperature=0.5)
    assert isinstance(llama_cli.memory.MemoryLimitError("x"), UsageError)  # exit 2 in the CLI


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr": float("nan")}, "must be finite numbers"),
        ({"beta2": 1.0}, "beta2"),
        ({"vocab_size": 0}, "vocab_size must be at least 64"),
        ({"max_len": 0}, "max_len must be at least 2 tokens"),
    ],
)
def test_training_settings_without_meaning_are_refused(settings: dict[str, float], message: str, tmp_path: Path) -> None:
    from llama_cli.finetune import FinetuneSettings
    from llama_cli.train_settings import LoopSettings, PretrainSettings

    with pytest.raises(UsageError, match=message):
        if "vocab_size" in settings:
            PretrainSettings(data=["x"], out=tmp_path, **settings)  # type: ignore[arg-type]
        elif "max_len" in settings:
            FinetuneSettings(data="x", out=tmp_path, **settings)  # type: ignore[arg-type]
        else:
            LoopSettings(**settings)


def test_training_that_cannot_fit_in_memory_is_refused_before_it_starts(tmp_path: Path) -> None:
    from llama_cli.memory import MemoryLimitError
    from llama_cli.train import pretrain
    from llama_cli.train_settings import LoopSettings, PretrainSettings

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The harbour wall was built of granite blocks. " * 200)
    too_wide = PretrainSettings(data=[str(corpus)], out=tmp_path / "a", dim=65536, n_heads=512, n_layers=1000)
    with pytest.raises(MemoryLimitError, match=r"^training [\d,]+ parameters with batch_size 16 needs [\d,.]+ GB"):
        pretrain(too_wide, device="cpu")
    too_many = PretrainSettings(data=[str(corpus)], out=tmp_path / "b", loop=LoopSettings(batch_size=10**8))
    with pytest.raises(MemoryLimitError, match=r"at most [\d,]+ sequences per batch fit"):
        pretrain(too_many, device="cpu")
    assert not (tmp_path / "a" / "train.json").exists()  # refused before anything was trained or written


def test_training_on_the_cpu_counts_every_rank_of_the_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun each rank checked the machine's memory as if it were alone; LOCAL_WORLD_SIZE
    ranks on the CPU share it (here: room for the run twice over, so one rank fits and four do not)."""
    import llama_cli.memory
    from llama_cli.memory import HEADROOM, MemoryLimitError
    from llama_cli.train import pretrain
    from llama_cli.train_settings import PRESETS, PretrainSettings, training_bytes

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The harbour wall was built of granite blocks. " * 200)
    settings = PretrainSettings(data=[str(corpus)], out=tmp_path / "run")
    fixed, per_sequence = training_bytes(settings.model_config(PRESETS[settings.preset].vocab_size))
    one_rank = fixed + settings.loop.batch_size * per_sequence
    monkeypatch.setattr(llama_cli.memory, "available_bytes", lambda *args: int(2 * one_rank / HEADROOM))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(MemoryLimitError, match=r"with batch_size 16 in each of 4 ranks on this machine needs .* at most \d+ sequences"):
        pretrain(settings, device="cpu")


def test_json_nested_too_deeply_is_a_clear_error(tmp_path: Path) -> None:
    from llama_cli.conversation import HistoryError, read_messages

    deep = '{"a":' * 100_000 + "1" + "}" * 100_000
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(deep)
    (folder / "model.safetensors").write_text("")
    with pytest.raises(ModelFormatError, match="config.json: JSON nested too deeply"):
        load_checkpoint(folder)
    (tmp_path / "history.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(HistoryError, match="history.json: JSON nested too deeply"):
        read_messages(tmp_path / "history.json")


def test_errors_are_one_line_and_a_closed_pipe_is_141(tmp_path: Path) -> None:
    import subprocess
    import sys

    help_piped = subprocess.run(f"'{sys.executable}' -m llama_cli --help | head -c 10", shell=True, capture_output=True, text=True)
    assert help_piped.returncode == 0 and not help_piped.stderr  # head's status; ours below
    closed = subprocess.Popen([sys.executable, "-m", "llama_cli", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    closed.stdout.read(10)  # type: ignore[union-attr]
    closed.stdout.close()  # type: ignore[union-attr]
    assert closed.wait(timeout=60) == 141 and closed.stderr.read() == b""  # type: ignore[union-attr]


def test_a_newline_in_an_error_stays_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from llama_cli.cli.errors import fail

    fail("no model file or folder at 'bad\nname.gguf'")
    assert capsys.readouterr().err == "llama: error: no model file or folder at 'bad\\nname.gguf'\n"


def test_a_tokenizer_regex_that_panics_is_a_clear_error_naming_the_file(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from tokenizers import Regex, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    from llama_cli.errors import TokenizerError
    from llama_cli.tokenizer import load_tokenizer

    backend = Backend(models.BPE(vocab={"a": 0, "!": 1}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("(a|a)+$"), behavior="isolated")  # backtracks without end
    backend.save(str(tmp_path / "tokenizer.json"))
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.encode("aaa") == [0, 0, 0]
    with pytest.raises(TokenizerError, match=r"tokenizer\.json failed on this text .*retry-limit"):
        tokenizer.encode("a" * 40 + "!")
    assert "panicked" not in capfd.readouterr().err  # the Rust panic's own lines are not printed


def test_a_long_run_of_spaces_is_pre_tokenized_in_linear_time(tmp_path: Path) -> None:
    """DeepSeek LLM's `\\s+$` (llama.cpp's) retried a run of spaces before a digit from every space:
    200,000 took 195 s. The same splits as llama.cpp's regex, and 100,000 spaces inside 10 s of CPU
    (a child under setrlimit; the quadratic regex needs ~50 s)."""
    import resource
    import subprocess
    import sys

    from tokenizers import Regex, pre_tokenizers

    from llama_cli.gguf_vocab import PRE_TOKENIZERS

    def splits(regexes: list[str]) -> pre_tokenizers.PreTokenizer:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes])

    ours = list(PRE_TOKENIZERS["deepseek-llm"].regexes)
    llama_cpp = [r"\s+$" if r == r"(?<!\s)\s+$" else r for r in ours]
    assert llama_cpp != ours
    for text in ["a  b \n  c   1  ", "x   ", "  ", "\t\t 9", "hello world  \n", "end. \u3000 1"]:
        assert splits(ours).pre_tokenize_str(text) == splits(llama_cpp).pre_tokenize_str(text)
    code = "from llama_cli.gguf_vocab import pre_tokenizer; pre_tokenizer('deepseek-llm').pre_tokenize_str(' ' * 100_000 + '1')"

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (10, 10))

    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=limits, timeout=60)
    assert child.returncode == 0, (child.returncode, child.stderr[-1000:])


def test_a_tokenizer_with_known_regexes_leaves_stderr_alone(tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Silencing fd 2 loses what other threads write meanwhile (serve's log): only a regex that is
    not llama.cpp's is run that way; the default model's (from its GGUF, or saved in a folder) is
    not, nor Llama 3's as its tokenizer.json spells it."""
    from tokenizers import Regex, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    import llama_cli.tokenizer
    from llama_cli.gguf_vocab import HF_CONTRACTIONS
    from llama_cli.registry import resolve_model
    from llama_cli.tokenizer import load_tokenizer, load_vocabulary

    llama3 = HF_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    backend = Backend(models.BPE(vocab={"H": 0, "1": 1}, merges=[], unk_token="H"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(llama3), behavior="isolated")
    backend.save(str(tmp_path / "tokenizer.json"))
    redirected: list[int] = []
    monkeypatch.setattr(llama_cli.tokenizer.os, "dup2", lambda *fds: redirected.append(fds[1]))
    for tokenizer in (load_vocabulary(resolve_model(None))[0], load_tokenizer(tiny_model_path), load_tokenizer(tmp_path)):
        assert tokenizer.encode("Hello, world 123") and redirected == []


def test_token_counts_of_long_texts_are_exact_in_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cli.tokenizer
    from llama_cli.registry import resolve_model
    from llama_cli.tokenizer import count_tokens, load_vocabulary

    tokenizer, _ = load_vocabulary(resolve_model(None))
    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8") * 3
    monkeypatch.setattr(llama_cli.tokenizer, "COUNT_CHUNK", 2_000)  # many pieces, each ending at a line break
    assert count_tokens(tokenizer, text) == len(tokenizer.encode(text))


def test_save_on_a_full_disk_keeps_the_previous_conversation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import llama_cli.conversation
    from llama_cli.conversation import HistoryError, read_messages, write_messages

    path = tmp_path / "talk.json"
    before = [{"role": "user", "content": "keep me"}, {"role": "assistant", "content": "kept"}]
    write_messages(path, before)

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(llama_cli.conversation.os, "fsync", disk_full)
    with pytest.raises(HistoryError, match="No space left on device"):
        write_messages(path, [*before, {"role": "user", "content": "x" * 10_000}])
    assert read_messages(path) == before and [p.name for p in tmp_path.iterdir()] == ["talk.json"]


def test_a_context_beyond_the_models_is_cut_with_a_warning() -> None:
    from llama_cli.settings import context_window

    assert context_window(None, 8192) == 8192 and context_window(512, 8192) == 512
    with pytest.warns(UserWarning, match="a context of 1,000,000,000 tokens is beyond the model's 8,192; using 8,192"):
        assert context_window(10**9, 8192) == 8192


def test_a_damaged_run_folder_is_a_clear_error_on_resume(tmp_path: Path) -> None:
    from llama_cli.trainer import load_state, rewrite_metrics, saved_settings

    (tmp_path / "train.json").write_text('{"settings": {"preset": "ti')  # killed mid-write
    with pytest.raises(UsageError, match=r"cannot read .*train\.json: Unterminated string"):
        saved_settings(tmp_path, "train.json", "training")
    (tmp_path / "train.json").write_text('{"corpus": {}}')
    with pytest.raises(UsageError, match="train.json holds no settings"):
        saved_settings(tmp_path, "train.json", "training")
    (tmp_path / "train_state.pt").write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(UsageError, match=r"^resume: cannot read .*train_state\.pt") as error:
        load_state(tmp_path)
    assert "\n" not in str(error.value)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n{"step": 3, "lo')
    rewrite_metrics(tmp_path, 2)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n'


def test_an_adapter_with_nan_alpha_is_refused_and_unknown_base_fields_are_ignored() -> None:
    from llama_cli.config import ModelConfig
    from llama_cli.lora import Adapter, LoRAConfig

    with pytest.raises(UsageError, match="^alpha must be a finite number, got nan"):
        LoRAConfig(alpha=float("nan"))
    shape = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 128, "vocab_size": 300}
    config = ModelConfig(**shape, rope_theta=10000.0, context_length=64)
    Adapter(LoRAConfig(), {}, {**shape, "a_field_from_a_newer_version": 3}).check_base(config, "the model")


def test_old_turns_are_dropped_as_one_at_a_time_would_and_a_system_message_alone_loads() -> None:
    from llama_cli.chat_history import ChatHistory

    class Counted(ChatHistory):  # a token per character: sizes are easy to follow
        context, max_tokens = 400, 50

        def _encode(self, messages):  # type: ignore[no-untyped-def]
            return [0] * sum(len(m["content"]) + 4 for m in messages)

    history = Counted()
    history.load([{"role": "system", "content": "Be brief."}])  # no turn at all
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "x" * (i % 7) * 9} for i in range(200)]
    history.load([{"role": "system", "content": "Be brief."}, *turns])
    messages, ids, dropped, room = history.fit("and now?")
    one_at_a_time = [history.messages[0], *turns, {"role": "user", "content": "and now?"}]
    while len(history._encode(one_at_a_time)) + 50 > 400:
        del one_at_a_time[1:3]  # the oldest turn: a user message and its reply
    assert messages == one_at_a_time and ids == history._encode(messages) and room == 50
    assert dropped == len(turns) + 2 - len(one_at_a_time)  # of the system message, the turns and the new message


def test_a_large_number_a_template_only_prints_is_not_refused() -> None:
    from llama_cli.chat_template import render_chat

    # `attr` is a filter jinja2 passes the environment to: the number is its value, not an argument.
    assert render_chat("{{ 12345678901 | string }} {{ 12345678901 | attr('real') }}", []) == "12345678901 12345678901"


def _prose(characters: int) -> str:
    """`characters` of plain English lines (varied, so BPE does not merge them into a few tokens)."""
    words = ("the", "harbour", "wall", "was", "built", "of", "granite", "blocks", "carried", "by", "cart", "from", "the", "quarry")
    line = [" ".join(words[(i * 7 + j) % len(words)] for j in range(15)) + ".\n" for i in range(len(words))]
    return ("".join(line) * (characters // len("".join(line)) + 1))[:characters]


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> dict[str, Path]:
    """Inputs that once took the machine: big texts and histories, a FIFO, a GGUF claiming a context
    of 2**40 tokens, a model folder whose chat template builds a 10 GB string."""
    import json

    root = tmp_path_factory.mktemp("hostile")
    files = {name: root / name for name in ("text_1mb", "text_2mb", "history", "corpus", "fifo", "huge_context", "template")}
    files["text_1mb"].write_text(_prose(1_000_000))
    files["text_2mb"].write_text(_prose(2_000_000))
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": _prose(1000)} for i in range(1000)]
    files["history"].write_text(json.dumps(turns))  # 1 MB: took 63-81 s before old turns were dropped by bisection
    files["corpus"].write_text("The harbour wall was built of granite blocks. " * 200)
    os.mkfifo(files["fifo"])

    def huge_context(writer: gguf.GGUFWriter) -> None:
        writer.add_uint64("llama.context_length", 2**40)

    write_gguf(files["huge_context"], TINY, random_weights(TINY), extra=huge_context)
    files["template"].mkdir()
    for part in tiny_model_path.iterdir():
        (files["template"] / part.name).symlink_to(part)
    (files["template"] / "chat_template.jinja").unlink()
    (files["template"] / "chat_template.jinja").write_text("{{ 'a' * 10**10 }}")
    files["out"] = root / "out"
    files["tiny"] = tiny_model_path
    return files


# id: (arguments ({name} is a file of `hostile_files`), stdin file, exit code, what the one line says,
# address space allowed beyond the imported package's, in MB)
RESOURCE_CASES: dict[str, tuple[list[str], str | None, int, str, int]] = {
    "samples-10**6": (["generate", "-m", "{tiny}", "--samples", "1000000", "Hi"], None, 2, "--samples must be between 1 and 1024", 3072),
    "samples-beyond-memory": (["generate", "-m", "{tiny}", "--samples", "1024", "-n", "4000", "Hi"], None, 2, "sequences fit", 1024),
    "train-dim-layers": (
        ["train", "{corpus}", "-o", "{out}", "--dim", "65536", "--heads", "512", "--layers", "1000"], None, 2,
        "parameters with --batch-size 16 needs", 3072,
    ),
    "train-batch-size": (["train", "{corpus}", "-o", "{out}", "--batch-size", "100000000"], None, 2, "sequences per batch fit", 3072),
    "threads-100000": (["generate", "-m", "{tiny}", "--threads", "100000", "Hi"], None, 2, "100000 threads on", 3072),
    "threads-20000": (["generate", "-m", "{tiny}", "--threads", "20000", "Hi"], None, 2, "20000 threads on", 3072),
    "summarize-1mb": (["summarize", "-m", "{tiny}", "--ctx", "512", "-n", "8"], "text_1mb", 2, "more than --max-chunks 256", 3072),
    "fifo-as-model": (["generate", "-m", "{fifo}", "Hi"], None, 1, "not a regular file or a folder", 3072),
    "context-2**40": (["generate", "-m", "{huge_context}", "-n", "1000000000", "Hi"], None, 1, "beyond any real model", 3072),
    "template-10gb-string": (["generate", "--chat", "-m", "{template}", "Hi"], None, 1, "would build 10,000,000,000 items", 3072),
}  # fmt: skip


# One worker runs every limited case: one fork server (limits.py) and one set of files for them all.
LIMITED = pytest.mark.xdist_group("limited")


@LIMITED
@pytest.mark.parametrize("case", list(RESOURCE_CASES))
def test_resource_cases_fail_cleanly_under_limits(case: str, hostile_files: dict[str, Path]) -> None:
    """Each is one line and its exit code inside the limits (a regression is killed or refused
    memory: a signal's negative exit code, or an allocation failure's message)."""
    args, stdin, code, needle, megabytes = RESOURCE_CASES[case]
    names = {name: str(path) for name, path in hostile_files.items()}
    result = run_limited(
        *(arg.format(**names) for arg in args),
        input=hostile_files[stdin].read_bytes() if stdin else None,
        memory_bytes=megabytes << 20,
        wall_seconds=60,
    )
    assert result.exit_code == code, f"exit {result.exit_code}: {result.stderr[-2000:]}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llama: error: ") and needle in lines[0], result.stderr[-2000:]


@LIMITED
def test_big_inputs_run_in_bounded_memory(hostile_files: dict[str, Path]) -> None:
    """`tokenize --count` of 2 MB in 224 MB beyond the package (one encode of it took ~260 MB more;
    20 MB took 3.1 GB), and `chat --history` of 1,000 messages (1 MB: 63-81 s when the issue was filed)."""
    counted = run_limited(
        "tokenize", "--count", "-m", hostile_files["tiny"], "-", input=hostile_files["text_2mb"].read_bytes(), memory_bytes=224 << 20
    )
    assert counted.exit_code == 0 and counted.stdout.strip().isdigit() and counted.stderr == "", counted.stderr[-2000:]
    history = ["chat", "-m", hostile_files["tiny"], "--ctx", "1024", "-n", "2", "--history", hostile_files["history"]]
    chatted = run_limited(*history, input="Hello\n")
    assert chatted.exit_code == 0, chatted.stderr[-2000:]
    assert "[dropped the oldest 996 messages to fit the 1024-token context]" in chatted.stderr and "Traceback" not in chatted.stderr


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_hidden_layers", "1", "n_layers must be an integer, got '1'"),  # int() took the string
        ("hidden_size", 64.9, "dim must be an integer, got 64.9"),  # int() cut it to 64 and the model ran
        ("rope_theta", float("nan"), "rope_theta must be a positive number, got nan"),
        ("rope_scaling", {"rope_type": "llama3", "factor": 0.0, "original_max_position_embeddings": 32}, "positive finite factors"),
    ],
)
def test_config_json_values_without_meaning_are_refused(field: str, value: object, message: str, tmp_path: Path) -> None:
    from test_weights import write_hf

    folder = write_hf(tmp_path / "hf", TINY, random_weights(TINY), **{field: value})
    with pytest.raises(ModelFormatError, match=r"config\.json: impossible model shape .*" + message):
        load_checkpoint(folder, cache=False)


def test_a_top_k_past_the_vocabulary_keeps_every_token() -> None:
    from llama_cli.sampling import SamplingSettings, sample, sampling_distribution

    logits = torch.tensor([2.0, 1.0, 0.5, -1.0])
    whole = sampling_distribution(logits, SamplingSettings(top_k=0))
    assert torch.equal(sampling_distribution(logits, SamplingSettings(top_k=10**12)), whole)
    assert 0 <= sample(logits, SamplingSettings(top_k=10**12), torch.Generator().manual_seed(0)) < 4


def test_a_truncated_model_config_is_a_clear_error_on_resume(tmp_path: Path) -> None:
    from llama_cli.textio import read_json_object

    (tmp_path / "llama.json").write_text('{"dim": 64, "n_la')  # killed mid-write; train --resume reads it so
    with pytest.raises(UsageError, match=r"cannot read .*llama\.json: Unterminated string"):
        read_json_object(tmp_path / "llama.json", error=UsageError)
