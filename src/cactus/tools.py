"""LFM2 tool calls: parse `<|tool_call_start|>[name(arg=value, ...), ...]<|tool_call_end|>` out of
generated text into `[{"name": str, "arguments": dict}]`, and render calls back to that text.

Parsing uses Python's `ast` and evaluates literals only (never `eval`). A block that is not a
list of keyword-only calls with literal arguments (or the JSON-array form) stays in the text.
"""

from __future__ import annotations

import ast
import json
import math
from typing import Any

TOOL_CALL_START = "<|tool_call_start|>"
TOOL_CALL_END = "<|tool_call_end|>"

# JSON spellings a model sometimes mixes into Python-literal arguments.
_JSON_NAMES = {"true": True, "false": False, "null": None}


class _Malformed(ValueError):
    """A call block that is not a list of well-formed calls (internal: turned into plain text)."""


def parse_call_block(body: str) -> list[dict] | None:
    """The text between the markers -> list of calls, or None when it is malformed.

    Accepts `[f(a=1), g(b="x")]`, a single `f(a=1)`, and the JSON form
    `[{"name": "f", "arguments": {"a": 1}}]` (or one such object).
    """
    body = body.strip()
    if not body:
        return None
    try:
        return _calls_from_json(json.loads(body, parse_constant=_reject_constant))
    except (ValueError, RecursionError, _Malformed):
        pass
    try:
        tree = ast.parse(body, mode="eval").body
        nodes = tree.elts if isinstance(tree, ast.List) else [tree]
        return [_call_from_node(node) for node in nodes]
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError, _Malformed):
        return None


def extract_tool_calls(text: str) -> tuple[str, list[dict]]:
    """Remove every well-formed tool-call block from `text` -> (remaining text, calls in order).

    Malformed blocks are left in the text as they were written. A final block whose end marker
    never came (generation stopped after it) counts if its body parses completely.
    """
    calls: list[dict] = []
    kept: list[str] = []
    pos = 0
    while True:
        start = text.find(TOOL_CALL_START, pos)
        if start < 0:
            break
        body_start = start + len(TOOL_CALL_START)
        end = text.find(TOOL_CALL_END, body_start)
        stop = len(text) if end < 0 else end + len(TOOL_CALL_END)
        parsed = parse_call_block(text[body_start:len(text) if end < 0 else end])
        kept.append(text[pos:start] if parsed is not None else text[pos:stop])
        if parsed is not None:
            calls.extend(parsed)
        pos = stop
    kept.append(text[pos:])
    return "".join(kept), calls


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
    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in _JSON_NAMES:
            return ast.copy_location(ast.Constant(_JSON_NAMES[node.id]), node)
        return node


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
    raise _Malformed(f"{type(value).__name__} is not a JSON value")  # bytes, sets, complex


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


__all__ = [
    "TOOL_CALL_END",
    "TOOL_CALL_START",
    "extract_tool_calls",
    "format_tool_calls",
    "normalize_call",
    "parse_call_block",
]
