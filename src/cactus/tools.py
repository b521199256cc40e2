"""Model output -> answer, reasoning and tool calls: `parse_output` for a whole text and
`OutputParser`, the same parse fed piece by piece while streaming (the one definition behind
`TextGate`, the API, `cactus run` and the server); and tool calls rendered back to the text LFM2 writes.

Calls are `<|tool_call_start|>[name(arg=value, ...), ...]<|tool_call_end|>` (or the JSON form), read
with Python's `ast`, literals only (never `eval`). Reasoning is the `<think>...</think>` block.
"""

from __future__ import annotations

import ast
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_START = "<|tool_call_start|>"
TOOL_CALL_END = "<|tool_call_end|>"
THINK_START = "<think>"
THINK_END = "</think>"

# JSON spellings a model sometimes mixes into Python-literal arguments.
_JSON_NAMES = {"true": True, "false": False, "null": None}
_BARE_HEAD = re.compile(r"\[\s*([A-Za-z_][\w.]*)?(\s*)(\()?")
_LEADING_ZEROS = re.compile(r"0+[0-9]+")  # `07`: a decimal int Python 3 refuses; the model meant 7
_CONTROL_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


class _Malformed(ValueError):
    """A call that is not a well-formed call (internal: its text stays in the answer)."""


@dataclass
class ParsedOutput:
    content: str                                     # the answer, calls and think block removed
    reasoning: str                                   # the think block's text ("" when there is none)
    calls: list[dict] = field(default_factory=list)  # [{"name": str, "arguments": dict}] in order


def parse_output(text: str, tools: list | None = None, reasoning: bool | None = None) -> ParsedOutput:
    """Generated text -> its answer, reasoning and tool calls.

    `reasoning`: whether the text starts inside a think block (the prompt ended with `<think>`).
    None decides from the text: a `</think>` with no `<think>` before it closes a block the prompt
    opened. `tools` (the declared schemas) let a bare `[name(...)]` opening the answer count as a
    call when every name in it is declared. Feeding the same text to `OutputParser` in pieces,
    with the same `reasoning`, gives the same result.
    """
    if reasoning is None:
        end, start = text.find(THINK_END), text.find(THINK_START)
        reasoning = end >= 0 and not 0 <= start < end
    parser = OutputParser(tools, reasoning=reasoning)
    content, thought = parser.feed(text)
    rest, more = parser.close()
    return ParsedOutput(content + rest, thought + more, parser.calls)


def extract_tool_calls(text: str) -> tuple[str, list[dict]]:
    """Remove every well-formed tool-call block from `text` -> (remaining text, calls in order).
    Think tags are left as text (parse_output splits them off)."""
    parser = OutputParser(think=None)
    content, _ = parser.feed(text)
    rest, _ = parser.close()
    return content + rest, parser.calls


_REASONING, _CONTENT, _CALL, _BARE, _ECHO = "reasoning", "content", "call", "bare", "echo"


class OutputParser:
    """Text in, (answer piece, reasoning piece) out, holding back only what is still undecided.

    - `<think>` opening the output (after whitespace), or a prompt that opened it (`reasoning=True`),
      starts the reasoning; the first `</think>` ends it. Whitespace right after either tag and
      right before `</think>` is trimmed. Stop strings and tool-call markers inside it are text.
    - A call block becomes calls; its malformed calls stay in the answer (inside the markers, as
      written); a repeat of its body right after the end marker is dropped; a stray end marker
      is dropped. An unterminated block counts at `close()` if it parses.
    - With `tools`, a bare `[name(...)]` opening the answer is a call when all its names are
      declared and it parses whole; anywhere else (or with a markdown link) it is text.
    - A stop string in the answer ends it (the stop and all after it dropped).
    `think=None` turns reasoning off; a pair of other strings replaces the tags (TextGate uses it).
    """

    def __init__(self, tools: list | None = None, reasoning: bool = False, stop: tuple[str, ...] = (),
                 think: tuple[str, str] | None = (THINK_START, THINK_END)):
        self.declared = _declared_names(tools)
        self.stop = tuple(stop)
        self.open_tag, self.close_tag = think if think else ("", "")
        self.state = _REASONING if reasoning else _CONTENT
        self.pending = ""            # text fed but not yet released
        self.calls: list[dict] = []
        self.reasoning = ""          # all reasoning released so far
        self.stopped = False
        self.think_seen = reasoning or not think  # only one think block, at the start
        self.answer_start = True     # nothing of the answer released yet
        self.trim = reasoning        # drop whitespace at the head of pending (right after a tag)
        self.fresh = reasoning       # reasoning just opened by the prompt: a repeated `<think>` is dropped
        self.echo: tuple[str, ...] = ()
        self.scan: _Brackets | None = None
        self.searched = 0            # in a call block: where to look for its end marker from

    @property
    def in_reasoning(self) -> bool:
        return self.state == _REASONING

    def feed(self, text: str) -> tuple[str, str]:
        return self._run(text, final=False)

    def close(self, text: str = "") -> tuple[str, str]:
        """The output ended: decide whatever is held."""
        return self._run(text, final=True)

    def _run(self, text: str, final: bool) -> tuple[str, str]:
        if self.stopped:
            return "", ""
        self.pending += text
        content: list[str] = []
        reasoning: list[str] = []
        step = {_REASONING: self._reasoning, _CONTENT: self._content, _CALL: self._call,
                _BARE: self._bare, _ECHO: self._echo}
        while not self.stopped and step[self.state](content, reasoning, final):
            pass
        thought = "".join(reasoning)
        self.reasoning += thought
        return "".join(content), thought

    # Each step consumes from `pending` and returns True when the loop should run again.

    def _trimmed(self, final: bool) -> bool:
        """Drop whitespace after a tag; False while all that is pending is whitespace."""
        if self.trim:
            self.pending = self.pending.lstrip()
            if not self.pending:
                return False
            self.trim = False
        return bool(self.pending)

    def _reasoning(self, content: list[str], reasoning: list[str], final: bool) -> bool:
        if not self._trimmed(final):
            return False
        p = self.pending
        if self.fresh:
            if p.startswith(self.open_tag):
                self.pending, self.trim, self.fresh = p[len(self.open_tag):], True, False
                return True
            if self.open_tag.startswith(p) and not final:
                return False
            self.fresh = False
        end = p.find(self.close_tag)
        if end >= 0:
            reasoning.append(p[:end].rstrip())
            self.pending, self.state, self.trim, self.answer_start = p[end + len(self.close_tag):], _CONTENT, True, True
            return True
        if final:
            reasoning.append(p.rstrip())
            self.pending = ""
            return False
        body = p[:len(p) - _held_tail(p, (self.close_tag,))]
        body = body.rstrip()  # whitespace may still turn out to stand before `</think>`
        reasoning.append(body)
        self.pending = p[len(body):]
        return False

    def _content(self, content: list[str], reasoning: list[str], final: bool) -> bool:
        if not self._trimmed(final):
            return False
        p = self.pending
        if self.answer_start:
            head = p.lstrip()
            if not self.think_seen:
                if head.startswith(self.open_tag):
                    self.pending, self.state = head[len(self.open_tag):], _REASONING
                    self.think_seen = self.trim = True
                    return True
                if self.open_tag.startswith(head) and not final:
                    return False
            if self.declared:
                kind = _bare_head(head, self.declared)
                if kind == "maybe" and not final:
                    return False
                if kind == "call":
                    self.state, self.scan = _BARE, _Brackets(len(p) - len(head))
                    return True
            self.answer_start = False
        markers = [(p.find(m), 1, m) for m in self.stop] + [(p.find(TOOL_CALL_START), 0, TOOL_CALL_START),
                                                          (p.find(TOOL_CALL_END), 2, TOOL_CALL_END)]
        hits = sorted(h for h in markers if h[0] >= 0)
        if not hits:
            keep = 0 if final else _held_tail(p, self.stop + (TOOL_CALL_START, TOOL_CALL_END))
            content.append(p[:len(p) - keep])
            self.pending = p[len(p) - keep:]
            return False
        at, kind, marker = hits[0]
        content.append(p[:at])
        self.pending = p[at + len(marker):]
        if kind == 1:  # a stop string
            self.pending, self.stopped = "", True
            return False
        if kind == 0:
            self.state = _CALL
        return True  # a call block starts, or a stray end marker was dropped

    def _call(self, content: list[str], reasoning: list[str], final: bool) -> bool:
        p = self.pending
        end = p.find(TOOL_CALL_END, self.searched)
        if end < 0 and not final:
            self.searched = max(0, len(p) - len(TOOL_CALL_END) + 1)  # each char is searched once
            return False
        self.searched = 0
        body = p if end < 0 else p[:end]
        calls, bad = parse_calls(body)
        if not calls:
            content.append(TOOL_CALL_START + body + (TOOL_CALL_END if end >= 0 else ""))
        elif bad:
            content.append(f"{TOOL_CALL_START}[{', '.join(bad)}]{TOOL_CALL_END}")
        self.calls += calls
        self.pending = "" if end < 0 else p[end + len(TOOL_CALL_END):]
        self.state, self.echo = (_ECHO, _echoes(body)) if calls else (_CONTENT, ())
        return True

    def _bare(self, content: list[str], reasoning: list[str], final: bool) -> bool:
        p = self.pending
        close = self.scan.feed(p)
        if close < 0 and not final:
            return False
        start, self.scan = self.scan.start, None
        block = p[start:close + 1] if close >= 0 else ""
        calls = parse_call_block(block) if block else None
        self.answer_start = False
        if calls and all(c["name"] in self.declared for c in calls):
            self.calls += calls
            self.pending, self.state, self.echo = p[close + 1:], _ECHO, _echoes(block)
        else:
            self.state = _CONTENT  # plain text after all: the content step reads it (stops, markers)
        return True

    def _echo(self, content: list[str], reasoning: list[str], final: bool) -> bool:
        head = self.pending.lstrip()
        if not head and not final:
            return False
        for echo in self.echo:
            if head.startswith(echo):
                self.pending = head[len(echo):]
                break
        else:
            if not final and any(e.startswith(head) for e in self.echo):
                return False
        self.state, self.echo = _CONTENT, ()
        return True


def _echoes(body: str) -> tuple[str, ...]:
    """What a model that repeats a call body after the end marker writes: the body, with and
    without its brackets (longest first)."""
    body = body.strip()
    inner = body[1:-1].strip() if body.startswith("[") and body.endswith("]") else ""
    return tuple(e for e in (body, inner) if e)


def _bare_head(head: str, declared: set[str]) -> str | None:
    """"call" when `head` opens `[name(` with a declared name, "maybe" while it still could, else None."""
    if not head:
        return "maybe"
    m = _BARE_HEAD.match(head)
    if m is None:
        return None
    name = m.group(1) or ""
    if m.group(3):
        return "call" if name in declared else None
    if m.end() < len(head) or (m.group(2) and name not in declared):
        return None
    return "maybe" if any(d.startswith(name) for d in declared) else None


def _declared_names(tools: list | None) -> set[str]:
    names = set()
    for tool in tools or ():
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            names.add(fn["name"])
    return names


class _Brackets:
    """Finds, incrementally, the bracket closing the one at `start` in Python-like text, skipping
    strings (with their escapes and triple quotes). Linear in the text however it is fed."""

    def __init__(self, start: int):
        self.start = self.pos = start
        self.depth = 0
        self.quote = ""  # the open string's quote ("", ', ", ''' or \"\"\")

    def feed(self, text: str) -> int:
        """All the text so far -> index of the closing bracket, or -1 while it has not come."""
        i, n = self.pos, len(text)
        while i < n:
            c = text[i]
            if self.quote:
                if c == "\\":
                    if i + 1 >= n:
                        break  # the escaped character has not come yet
                    i += 2
                    continue
                if text.startswith(self.quote, i):
                    i += len(self.quote)
                    self.quote = ""
                    continue
                if len(self.quote) == 3 and self.quote[0] == c and n - i < 3:
                    break  # maybe the start of the closing triple quote
            elif c in "'\"":
                if n - i < 3 and text[i:] == c * (n - i):
                    break  # one quote or three?
                self.quote = c * 3 if text.startswith(c * 3, i) else c
                i += len(self.quote)
                continue
            elif c in "([{":
                self.depth += 1
            elif c in ")]}":
                self.depth -= 1
                if self.depth == 0:
                    self.pos = i + 1
                    return i
            i += 1
        self.pos = i
        return -1


# ----------------------------------------------------------------------------- call blocks

def parse_call_block(body: str) -> list[dict] | None:
    """The text between the markers -> list of calls, or None unless every call in it is well formed.

    Accepts `[f(a=1), g(b="x")]`, a single `f(a=1)`, and the JSON form
    `[{"name": "f", "arguments": {"a": 1}}]` (or one such object).
    """
    calls, bad = parse_calls(body)
    return calls if calls and not bad else None


def parse_calls(body: str) -> tuple[list[dict], list[str]]:
    """A call block's text -> (its well-formed calls, the text of each malformed one).

    Tried in order: JSON; Python literals as written; the same with raw control characters in
    strings escaped and `07` read as 7; unescaped inner quotes (`cmd="echo "hi""`) escaped where
    the quote cannot be the string's end; then call by call, so one bad call keeps its siblings.
    """
    body = body.strip()
    if not body:
        return [], [body]
    try:
        value = json.loads(body, strict=False, parse_constant=_reject_constant)
    except (ValueError, RecursionError, _Malformed):
        pass
    else:
        return _calls_from_json_items(value, body)
    nodes = _parse_python(body)
    if nodes is not None:
        calls, bad = _calls_from_nodes(nodes, body)
        if not bad:
            return calls, bad
    elements = _split_elements(body)
    calls, bad = [], []
    for text in elements:
        nodes = _parse_python(text)
        got, wrong = _calls_from_nodes(nodes, text) if nodes is not None and len(nodes) == 1 else ([], [text])
        calls += got
        bad += wrong
    return calls, bad


def _calls_from_json_items(value: Any, body: str) -> tuple[list[dict], list[str]]:
    items = value if isinstance(value, list) else [value]
    calls, bad = [], []
    for item in items:
        try:
            calls += _calls_from_json(item)
        except _Malformed:
            bad.append(json.dumps(item, ensure_ascii=False) if isinstance(value, list) else body)
    return calls, bad


def _calls_from_nodes(nodes: list[ast.expr], source: str) -> tuple[list[dict], list[str]]:
    calls, bad = [], []
    for node in nodes:
        try:
            calls.append(_call_from_node(node))
        except (_Malformed, ValueError, TypeError, RecursionError, MemoryError):
            bad.append(source)  # the caller splits a block with a bad call and retries call by call
    return calls, bad


def _parse_python(source: str) -> list[ast.expr] | None:
    """`[call, ...]` or one call -> its nodes, trying the repairs in turn; None if none parses."""
    tries = [source]
    for loose in (False, True):
        fixed = _repair(source, loose)
        if fixed not in tries:
            tries.append(fixed)
    for text in tries:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escapes such as "\d" (a SyntaxWarning)
                tree = ast.parse(text, mode="eval").body
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        return tree.elts if isinstance(tree, ast.List) else [tree]
    return None


def _repair(src: str, loose: bool) -> str:
    """Python-literal text as a model writes it -> text `ast` reads: raw control characters in
    strings escaped, `07` as `7`; with `loose`, a quote that cannot end its string (what follows
    it is not `,` `)` `]` `}` `:` or the end) is escaped. One linear pass."""
    out: list[str] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c in "'\"":
            q = c * 3 if src.startswith(c * 3, i) else c
            out.append(q)
            i += len(q)
            while i < n:
                c = src[i]
                if c == "\\" and i + 1 < n:
                    out.append(src[i:i + 2])
                    i += 2
                elif src.startswith(q, i):
                    if loose and len(q) == 1 and not _may_close(src, i + 1):
                        out.append("\\" + q)
                        i += 1
                        continue
                    out.append(q)
                    i += len(q)
                    break
                elif c < " " or c == "\x7f":
                    out.append(_CONTROL_ESCAPES.get(c, f"\\x{ord(c):02x}"))
                    i += 1
                else:
                    out.append(c)
                    i += 1
            continue
        if c.isdigit() and not (out and (out[-1][-1:].isalnum() or out[-1][-1:] in "_.")):
            j = i
            while j < n and (src[j].isalnum() or src[j] in "_."):
                j += 1
            token = src[i:j]
            out.append(token.lstrip("0") if _LEADING_ZEROS.fullmatch(token) and token.strip("0") else token)
            i = j
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _may_close(src: str, j: int) -> bool:
    """Whether a quote ending just before `j` can be the end of its string: it is followed by the
    end, `)` `]` `}` `:`, or a comma and then the next argument, element or string."""
    rest = src[j:j + 200].lstrip()
    if not rest or rest[0] in ")]}:":
        return True
    if rest[0] != ",":
        return False
    after = rest[1:].lstrip()
    return not after or bool(re.match(r"[A-Za-z_]\w*\s*=|['\"\[{(\d\-]|True|False|None|true|false|null", after))


def _split_elements(body: str) -> list[str]:
    """`[a(...), b(...)]` -> the text of each call, split at the commas outside any bracket or string."""
    inner = body[1:-1] if body.startswith("[") and body.endswith("]") else body
    parts, start, depth, quote, i = [], 0, 0, "", 0
    while i < len(inner):
        c = inner[i]
        if quote:
            if c == "\\":
                i += 1
            elif inner.startswith(quote, i):
                i += len(quote) - 1
                quote = ""
        elif c in "'\"":
            quote = c * 3 if inner.startswith(c * 3, i) else c
            i += len(quote) - 1
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
        i += 1
    parts.append(inner[start:])
    return [p.strip() for p in parts if p.strip()]


def format_tool_calls(calls: list[dict]) -> str:
    """Calls -> the text LFM2 writes: `<|tool_call_start|>[f(a=1, b='x')]<|tool_call_end|>`."""
    parts = []
    for call in calls:
        name, arguments = normalize_call(call)
        args = ", ".join(f"{key}={_py_literal(value)}" for key, value in arguments.items())
        parts.append(f"{name}({args})")
    return f"{TOOL_CALL_START}[{', '.join(parts)}]{TOOL_CALL_END}"


def normalize_call(call: Any) -> tuple[str, dict]:
    """One call as given by a user, OpenAI-style (`{"function": {"name", "arguments": "<json>"}}`)
    or plain (`{"name", "arguments": {...}}`) -> (name, arguments dict). Raises ValueError."""
    if not isinstance(call, dict):
        raise ValueError(f"a tool call must be an object, got {type(call).__name__}")
    fn = call.get("function", call)
    if not isinstance(fn, dict):
        raise ValueError("a tool call's 'function' must be an object")
    name = fn.get("name")
    if not isinstance(name, str) or not _is_call_name(name):
        raise ValueError(f"a tool call needs a 'name' that is a Python identifier, got {name!r}")
    arguments = fn.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError as e:
            raise ValueError(f"tool call {name!r}: 'arguments' is not valid JSON ({e})") from None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ValueError(f"tool call {name!r}: 'arguments' must be an object")
    for key in arguments:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"tool call {name!r}: argument name {key!r} is not an identifier")
    return name, arguments


def _calls_from_json(value: Any) -> list[dict]:
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or set(item) - {"name", "arguments", "id", "type", "function"}:
            raise _Malformed("not a {name, arguments} object")
        try:
            name, arguments = normalize_call(item)
        except ValueError as e:
            raise _Malformed(str(e)) from None
        calls.append({"name": name, "arguments": arguments})
    return calls


def _reject_constant(name: str) -> Any:
    raise _Malformed(f"{name} is not a JSON value")


def _call_from_node(node: ast.expr) -> dict:
    if isinstance(node, ast.Dict):  # JSON form written with Python/JSON literals
        return _calls_from_json(_literal(node))[0]
    if not isinstance(node, ast.Call):
        raise _Malformed("not a call")
    if node.args:
        raise _Malformed("positional arguments")  # LFM2 calls take keyword arguments only
    arguments = {}
    for kw in node.keywords:
        if kw.arg is None or kw.arg in arguments:  # **kwargs, or a repeated name
            raise _Malformed("bad keyword")
        arguments[kw.arg] = _literal(kw.value)
    return {"name": _dotted_name(node.func), "arguments": arguments}


def _dotted_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted_name(node.value)}.{node.attr}"
    raise _Malformed("call of something that is not a name")


class _JsonNames(ast.NodeTransformer):
    """`true`/`false`/`null` as constants; a set as a list in its written order (JSON has no sets)."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in _JSON_NAMES:
            return ast.copy_location(ast.Constant(_JSON_NAMES[node.id]), node)
        return node

    def visit_Set(self, node: ast.Set) -> ast.AST:
        node = self.generic_visit(node)
        return ast.copy_location(ast.List(elts=node.elts, ctx=ast.Load()), node)


def _literal(node: ast.expr) -> Any:
    """A literal node -> a JSON-compatible value (tuples become lists); anything else is malformed."""
    node = _JsonNames().visit(node)
    return _to_json_value(ast.literal_eval(node))


def _to_json_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Malformed("non-finite number")
        return value
    if isinstance(value, (list, tuple)):
        return [_to_json_value(v) for v in value]
    if isinstance(value, dict):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise _Malformed("non-string key")
            out[key] = _to_json_value(v)
        return out
    raise _Malformed(f"{type(value).__name__} is not a JSON value")  # bytes, complex


def _py_literal(value: Any) -> str:
    """A JSON value as a Python literal (what LFM2 writes): True/False/None, repr'd strings."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_py_literal(k)}: {_py_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_py_literal(v) for v in value) + "]"
    if value is None or isinstance(value, (str, bool, int, float)):
        return repr(value)
    raise ValueError(f"tool-call argument of type {type(value).__name__} is not a JSON value")


def _is_call_name(name: str) -> bool:
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def _held_tail(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of one of `markers`."""
    best = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:k]):
                best = k
                break
    return best


__all__ = [
    "THINK_END",
    "THINK_START",
    "TOOL_CALL_END",
    "TOOL_CALL_START",
    "OutputParser",
    "ParsedOutput",
    "extract_tool_calls",
    "format_tool_calls",
    "normalize_call",
    "parse_call_block",
    "parse_calls",
    "parse_output",
]
