"""The interactive chat behind `cactus run`: streamed answers, tok/s, slash commands, multi-line
input, Ctrl-C to stop an answer. With piped stdin (no TTY) each line is a message, the answers go
to stdout and the statistics to stderr, so it scripts cleanly.
"""

from __future__ import annotations

import json
from typing import BinaryIO, TextIO

from .api import Completion, Model

DIM, PLAIN = "\x1b[2m", "\x1b[0m"

HELP = """commands:
  /reset         forget the conversation
  /system TEXT   set the system prompt (empty TEXT removes it)
  /tool TEXT     answer the last tool call with TEXT (a tool result) and let the model go on
  /think         show or hide a reasoning model's thinking (shown dimmed; hidden: only its length)
  /help          this help
  /exit          leave (also /quit or Ctrl-D)
multi-line input: end a line with \\ to continue it, or put lines between two lines of \"\"\"
Ctrl-C stops the answer being written."""


class BadInput(ValueError):
    """A message that cannot be read (not UTF-8): reported on its line, and the chat goes on."""


class LineReader:
    """Lines of the user's input, numbered. Piped input may be bytes (stdin.buffer): each line is
    decoded on its own, so one that is not UTF-8 fails alone (`line 3: not valid UTF-8 at byte 5`,
    the byte offset in that line, from 0) and the lines after it are still read."""

    def __init__(self, stdin: TextIO | BinaryIO, interactive: bool):
        self.stdin, self.interactive, self.number = stdin, interactive, 0

    def __call__(self, prompt: str) -> str | None:
        """The next line without its newline (None at end of input); BadInput if it is not text."""
        self.number += 1
        if self.interactive:
            try:
                return input(prompt)
            except EOFError:
                return None
            except UnicodeDecodeError as e:  # a terminal whose encoding is strict
                raise BadInput(f"line {self.number}: not valid {e.encoding} at byte {e.start}") from None
        raw = self.stdin.readline()
        if not raw:
            return None
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BadInput(f"line {self.number}: not valid UTF-8 at byte {e.start}") from None
        return raw.removesuffix("\n").removesuffix("\r")


def read_message(read: LineReader) -> str | None:
    """One message from the user (None at end of input), joining continued and \"\"\" blocks.
    A message with a bad line is read to its end, then refused whole (BadInput)."""
    errors: list[BadInput] = []

    def line(prompt: str) -> str | None:
        try:
            return read(prompt)
        except BadInput as e:
            errors.append(e)
            return ""

    first = line(">>> ")
    if first is None:
        return None
    if first.strip() == '"""':
        block = []
        while (nxt := line("... ")) is not None and nxt.strip() != '"""':
            block.append(nxt)
        text = "\n".join(block)
    else:
        parts = [first]
        while parts[-1].endswith("\\"):
            parts[-1] = parts[-1][:-1]
            nxt = line("... ")
            if nxt is None:
                break
            parts.append(nxt)
        text = "\n".join(parts)
    if errors:
        raise errors[0]
    return text


def describe_call(call: dict) -> str:
    return f"{call['name']}({json.dumps(call['arguments'], ensure_ascii=False)})"


def repl(model: Model, stdin: TextIO, stdout: TextIO, stderr: TextIO, tools: list | None = None,
         system: str | None = None, options: dict | None = None) -> int:
    """The chat loop -> exit code: 0, or 1 when piped input had a turn that failed (a bad line, a
    refused request), so a script sees it."""
    interactive = stdin.isatty()
    options = options or {}
    history: list[dict] = []
    read = LineReader(stdin, interactive)
    failed = 0
    show_thinking = interactive  # piped: stdout holds only the answers
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        from .demo import DEMO_DIR

        name = "the built-in demo model" if model.path.resolve() == DEMO_DIR.resolve() else model.path.name
        quant = getattr(model.engine, "quant", "")
        stderr.write(f"cactus chat · {name} ({quant}) · /help for commands, Ctrl-D to leave\n")

    def conversation() -> list[dict]:
        return ([{"role": "system", "content": system}] if system else []) + history

    while True:
        try:
            text = read_message(read)
        except KeyboardInterrupt:
            stderr.write("\n")
            break
        except BadInput as e:
            stderr.write(f"error: {e}\n")
            failed += 1
            continue
        if text is None:
            break
        if not text.strip():
            continue
        command, _, arg = text.strip().partition(" ")
        if command in ("/exit", "/quit"):
            break
        if command == "/help":
            stderr.write(HELP + "\n")
            continue
        if command == "/reset":
            history.clear()
            model.reset()
            stderr.write("[conversation cleared]\n")
            continue
        if command == "/think":
            show_thinking = not show_thinking
            stderr.write("[thinking shown]\n" if show_thinking else "[thinking hidden]\n")
            continue
        if command == "/system":
            system = arg.strip() or None
            stderr.write("[system prompt set]\n" if system else "[system prompt removed]\n")
            continue
        if command == "/tool":
            history.append({"role": "tool", "content": arg})
        elif command.startswith("/") and " " not in command and command[1:].isalpha():
            stderr.write(f"unknown command {command}; /help lists them\n")
            continue
        else:
            history.append({"role": "user", "content": text})
        thinking = (stdout, DIM, PLAIN) if show_thinking and interactive else (stderr, "", "") if show_thinking \
            else None
        answer = _answer(model, conversation(), tools, options, stdout, stderr, thinking)
        if answer is None:  # the request itself was refused (e.g. too long): drop it
            history.pop()
            failed += 1
        else:
            history.append(answer)
    return 1 if failed and not interactive else 0


def _answer(model: Model, messages: list[dict], tools, options: dict, stdout: TextIO,
            stderr: TextIO, thinking: tuple[TextIO, str, str] | None = None) -> dict | None:
    """Stream one answer; returns the assistant message to keep in the conversation. `thinking`:
    where a reasoning model's thinking goes (stream, style on, style off), None: not shown."""
    shown: list[str] = []
    events = model.stream(messages, tools, **options)
    completion = None
    in_thought = False  # a thought is on screen, its style still on

    def end_thought() -> None:
        nonlocal in_thought
        if in_thought:
            out, _, off = thinking
            out.write(off + "\n")
            out.flush()
            in_thought = False

    try:
        for event in events:
            if isinstance(event, Completion):
                completion = event
                break
            if event.reasoning and thinking is not None:
                out, on, _ = thinking
                out.write(("" if in_thought else on) + event.reasoning)
                out.flush()
                in_thought = True
            if event.text:
                end_thought()
                shown.append(event.text)
                stdout.write(event.text)
                stdout.flush()
        end_thought()
    except KeyboardInterrupt:
        events.close()
        end_thought()
        stdout.write("\n")
        stderr.write("[stopped]\n")
        return {"role": "assistant", "content": "".join(shown)}
    except ValueError as e:
        stderr.write(f"error: {e}\n")
        return None
    if shown and not shown[-1].endswith("\n"):
        stdout.write("\n")
    message: dict = {"role": "assistant", "content": completion.response}
    if completion.thinking:
        message["reasoning_content"] = completion.thinking  # the template keeps or strips it
    if completion.function_calls:
        for call in completion.function_calls:
            stdout.write(f"[tool call] {describe_call(call)}\n")
        message["tool_calls"] = [{"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                                 for c in completion.function_calls]
    stats = (f"[{completion.decode_tps:.1f} tok/s · {completion.decode_tokens} tokens · "
             f"prefill {completion.prefill_tokens} tokens at {completion.prefill_tps:.0f} tok/s · "
             f"first token {completion.time_to_first_token_ms:.0f} ms]")
    if completion.thinking_tokens:
        stats += f" [thought {completion.thinking_tokens} tokens{'' if thinking else ': /think shows it'}]"
    if completion.cloud_handoff:
        stats += f" [low confidence {completion.confidence:.2f}: cloud handoff suggested]"
    stdout.flush()  # the answer is on screen before the statistics line
    stderr.write(stats + "\n")
    return message
