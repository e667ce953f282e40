"""The loop of `llama chat`: an interactive REPL on a terminal, one turn per line from a pipe.

Interactive: readline line editing and history (kept in $LLAMA_CHAT_HISTORY, default
~/.local/state/llama/chat_history), `\"\"\"` multi-line blocks, slash commands, Ctrl-C stops a reply
(the partial reply stays in the conversation, marked), Ctrl-D leaves. Replies stream as plain
text; `--markdown` renders them with rich once complete (a live preview while they stream).

Scripted (stdin not a terminal): each line of stdin is one user turn; stdout carries only the
replies, each followed by a newline; notices and stats go to stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import LlamaError
from .textio import write_out

if TYPE_CHECKING:  # torch-free at run time: `llama chat --server` runs this loop over serve/chat_client.py
    from .chat import ChatSession, Turn
    from .stats import TurnStats

PROMPT, CONTINUATION = ">>> ", "... "
BLOCK = '"""'

HELP = f"""\
Type a message and press Enter. For several lines, start with {BLOCK} and end a line with {BLOCK}
(a {BLOCK} block is always sent as text, even if it starts with /).
Ctrl-C stops a reply (the partial reply stays in the conversation, marked); Ctrl-D leaves.

  /help          this help
  /reset         forget the conversation (the system message stays)
  /system [TEXT] show the system message, or replace it with TEXT
  /save FILE     write the conversation as a JSON list of messages
  /load FILE     continue a conversation saved with /save
  /stats         tokens prefilled, reused from the cache and generated, per turn
  /exit          leave (also /quit or Ctrl-D)"""


def notice(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def error(text: str) -> None:
    print(f"llama: error: {text}", file=sys.stderr, flush=True)


def turn_line(number: int, stats: TurnStats) -> str:
    return (
        f"turn {number}: prompt {stats.prompt_tokens} tokens ({stats.cached_tokens} from the cache, "
        f"{stats.prefilled_tokens} prefilled at {stats.prefill_rate:.1f} tok/s) | reply {stats.generated_tokens} tokens "
        f"({stats.decode_rate:.1f} tok/s) | stop: {stats.stop_reason}"
    )


def stats_table(session: ChatSession) -> str:
    lines = [turn_line(i + 1, s) for i, s in enumerate(session.stats)] or ["no turns yet"]
    dropped = sum(s.dropped_messages for s in session.stats)
    lines.append(
        f"context: {session.tokens_in_use} of {session.context} tokens in the cache; "
        f"{len(session.messages)} messages in the conversation ({dropped} dropped to make room)"
    )
    return "\n".join(lines)


def start_notices(turn: Turn, session: ChatSession) -> None:
    if turn.dropped:
        notice(f"[dropped the oldest {turn.dropped} messages to fit the {session.context}-token context]")
    if turn.max_tokens < session.settings.max_tokens:
        notice(f"[only {turn.max_tokens} tokens of context left for this reply]")


def end_notices(turn: Turn) -> None:
    if turn.complete is False and not turn.interrupted:  # a constrained reply cut short
        notice(f"[the reply stopped at {turn.max_tokens} tokens before the value it must match was complete: it is not valid; raise -n]")


class WordWrap:
    """Streamed text broken at spaces so that no word runs past `width` columns (a word longer than
    a line stays whole). Each word is held until the space or newline after it arrives."""

    def __init__(self, width: int) -> None:
        self.width, self.column, self.word = width, 0, ""

    def feed(self, text: str) -> str:
        out: list[str] = []
        for char in text:
            if char not in " \n":
                self.word += char
                continue
            self._put_word(out)
            if char == "\n" or self.column >= self.width:
                out.append("\n")
                self.column = 0
            else:
                out.append(" ")
                self.column += 1
        return "".join(out)

    def flush(self) -> str:
        out: list[str] = []
        self._put_word(out)
        return "".join(out)

    def _put_word(self, out: list[str]) -> None:
        if not self.word:
            return
        if self.column and self.column + len(self.word) > self.width:
            out.append("\n")
            self.column = 0
        out.append(self.word)
        self.column += len(self.word)
        self.word = ""


def run_scripted(session: ChatSession, lines: Iterable[str] | None = None, *, stats: bool = False, as_json: bool = False) -> None:
    """One user turn per non-empty input line (slash commands included: they are REPL-only); only the
    replies on stdout, each plus a newline, or with `as_json` one JSON line per reply (replies may
    span lines: a script that needs them apart reads the JSON)."""
    source = lines if lines is not None else _stdin_lines()
    for line in source:
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        turn = session.turn(text)
        start_notices(turn, session)
        try:
            for event in turn:
                if not as_json:
                    write_out(event.text)
        except KeyboardInterrupt:
            turn.finish()
            write_out("\n" if not as_json else reply_json(session, turn) + "\n")
            raise
        write_out("\n" if not as_json else reply_json(session, turn) + "\n")
        end_notices(turn)
        if stats and turn.stats is not None:
            notice(turn_line(len(session.stats), turn.stats))


def reply_json(session: ChatSession, turn: Turn) -> str:
    turn.finish()
    s = turn.stats
    record = {"turn": len(session.stats), "text": turn.text, "stop_reason": turn.stop_reason}
    if s is not None:
        record.update(prompt_tokens=s.prompt_tokens, cached_tokens=s.cached_tokens, generated_tokens=s.generated_tokens)
    return json.dumps(record, ensure_ascii=False)


def _stdin_lines() -> Iterator[str]:
    for raw in sys.stdin.buffer:
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LlamaError(
                f"input line is not valid UTF-8 (byte 0x{raw[exc.start]:02x}); convert it, e.g. with iconv -f latin1 -t utf-8"
            ) from None


class Repl:
    """The interactive loop. `read` is `input` on a terminal; tests may pass another."""

    def __init__(
        self, session: ChatSession, *, markdown: bool = False, stats: bool = False, read: Callable[[str], str] | None = None
    ) -> None:
        self.session, self.markdown, self.stats = session, markdown, stats
        self.read = read or _terminal_reader()
        # Plain replies on a terminal are word-wrapped to its width; pipes get the text as it is.
        self.wrap_width: int | None = shutil.get_terminal_size().columns - 1 if sys.stdout.isatty() else None

    def run(self) -> None:
        history = _start_history() if self.read is input else None
        notice("Chatting: /help for commands, Ctrl-C stops a reply, Ctrl-D leaves.")
        try:
            while True:
                try:
                    text, block = self.read_message()
                except EOFError:
                    write_out("\n")
                    return
                except KeyboardInterrupt:
                    write_out("\n")
                    continue
                if not block and text.startswith("/"):
                    if not self.command(text):
                        return
                elif text.strip():
                    self.reply(text)
        finally:
            if history is not None:
                _save_history(history)

    def read_message(self) -> tuple[str, bool]:
        """(the message, whether it came as a \"\"\" block)."""
        line = self.read(PROMPT)
        stripped = line.strip()
        if not stripped.startswith(BLOCK):
            return stripped, False
        first = stripped[len(BLOCK) :]
        if first.endswith(BLOCK):
            return first[: -len(BLOCK)], True
        lines = [first] if first else []
        while True:
            line = self.read(CONTINUATION)
            if line.rstrip().endswith(BLOCK):
                lines.append(line.rstrip()[: -len(BLOCK)])
                return "\n".join(lines).strip("\n"), True
            lines.append(line)

    def command(self, line: str) -> bool:
        """Run a slash command; False means leave."""
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        session = self.session
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            notice(HELP)
        elif name == "/reset":
            session.reset()
            notice("[conversation cleared]")
        elif name == "/system":
            if argument:
                session.set_system(argument)
                notice("[system message set]")
            else:
                notice(session.system if session.system is not None else "[no system message: the template's default applies]")
        elif name in ("/save", "/load"):
            if not argument:
                error(f"{name} needs a file name")
                return True
            try:
                if name == "/save":
                    notice(f"[saved {session.save_file(argument)} messages to {argument}]")
                else:
                    notice(f"[loaded {session.load_file(argument)} messages from {argument}]")
            except LlamaError as exc:
                error(f"{exc}; the conversation is unchanged" if name == "/load" else str(exc))
        elif name == "/stats":
            notice(stats_table(session))
        else:
            error(f"unknown command {name} (/help lists them; send text starting with / as a {BLOCK} block)")
        return True

    def reply(self, text: str) -> None:
        try:
            turn = self.session.turn(text)
        except LlamaError as exc:
            error(str(exc))
            return
        except KeyboardInterrupt:  # before the reply began: the conversation is as it was
            notice("[interrupted]")
            return
        start_notices(turn, self.session)
        try:
            if self.markdown:
                self._stream_markdown(turn)
            else:
                self._stream_plain(turn)
                write_out("" if turn.text.endswith("\n") else "\n")
        except KeyboardInterrupt:
            turn.finish()
            if not self.markdown:
                write_out("" if turn.text.endswith("\n") or not turn.text else "\n")
            kept = "the partial reply stays in the conversation, marked" if turn.text else "nothing was generated; the message was dropped"
            notice(f"[interrupted: {kept}]")
        except LlamaError as exc:  # e.g. a template error: the session goes on
            turn.finish()
            error(str(exc))
        end_notices(turn)
        if turn.stop_reason == "length" and turn.settings.constraint is None:
            notice(f"[the reply was cut at {turn.max_tokens} tokens: raise -n for longer replies]")
        if self.stats and turn.stats is not None:
            notice(turn_line(len(self.session.stats), turn.stats))

    def _stream_plain(self, turn: Turn) -> None:
        wrap = WordWrap(self.wrap_width) if self.wrap_width else None
        try:
            for event in turn:
                write_out(wrap.feed(event.text) if wrap else event.text)
        finally:
            if wrap:
                write_out(wrap.flush())

    def _stream_markdown(self, turn: Turn) -> None:
        """A live preview while the reply streams (cropped to the screen), then the whole reply rendered."""
        from rich.console import Console
        from rich.live import Live
        from rich.markdown import Markdown

        console = Console()
        live = Live(Markdown(""), console=console, transient=True, vertical_overflow="crop", refresh_per_second=8)
        try:
            with live:
                for _ in turn:
                    live.update(Markdown(turn.text))
        finally:
            console.print(Markdown(turn.text))


def _terminal_reader() -> Callable[[str], str]:
    """`input` (with readline) when both ends are a terminal; else the prompt goes to stderr."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        try:
            import readline  # noqa: F401  (line editing for input())
        except ImportError:
            pass
        return input

    def read(prompt: str) -> str:
        sys.stderr.write(prompt)
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    return read


def _history_file() -> Path:
    if path := os.environ.get("LLAMA_CHAT_HISTORY"):
        return Path(path).expanduser()
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "llama" / "chat_history"


def _start_history() -> Path | None:
    try:
        import readline
    except ImportError:
        return None
    path = _history_file()
    readline.set_history_length(1000)
    try:
        readline.read_history_file(path)
    except OSError:
        pass  # first run, or unreadable: start with none
    return path


def _save_history(path: Path) -> None:
    import readline

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(path)
    except OSError as exc:
        notice(f"llama: warning: cannot save the line history to {path}: {exc.strerror or exc}")
