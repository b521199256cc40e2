"""Constrained decoding on llguidance: which token ids may come next, so that a tool call names a
declared tool with arguments that follow its JSON schema (in LFM2's pythonic call syntax),
`tool_choice` holds, and a `response_format` answer is JSON valid against its schema.

`plan(...)` checks a request's tools / tool_choice / response_format once and compiles their
grammars (errors name the field); `Plan.start(prompt_ids)` gives the per-answer `Constraint` that
`generate()` asks for a mask before each sample and tells each sampled id. Free text outside a
call block, and everything inside `<think>...</think>`, stays unconstrained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from .tools import TOOL_CALL_END, TOOL_CALL_START

THINK_START, THINK_END = "<think>", "</think>"
TOOL_CHOICES = ("auto", "none", "required")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
# Schema keywords a leaf grammar enforces: strings and numbers are written the same in JSON and
# in Python, so their leaves go to llguidance's own JSON-schema compiler whole.
_LEAF_KEYS = {"type", "minLength", "maxLength", "pattern", "format", "minimum", "maximum",
              "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
MAX_SCHEMA_DEPTH = 32


class GrammarError(ValueError):
    """A tool schema, tool_choice or response_format that cannot be honoured; names the field."""


def available() -> bool:
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- options

def check_tool_choice(name: str, value: Any) -> Any:
    """"auto" | "none" | "required" | {"type": "function", "function": {"name": str}} (or the
    Responses API's {"type": "function", "name": str}) -> the string or the tool's name as
    {"name": ...}."""
    if isinstance(value, str):
        if value not in TOOL_CHOICES:
            raise GrammarError(f"option {name!r} must be one of {', '.join(TOOL_CHOICES)} or "
                               f"{{'type': 'function', 'function': {{'name': ...}}}}, got {value!r}")
        return value
    if isinstance(value, dict) and (value.get("type") == "function" or set(value) == {"name"}):
        fn = value.get("function", value)
        if isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"]:
            return {"name": fn["name"]}
    raise GrammarError(f"option {name!r} must be 'auto', 'none', 'required' or "
                       f"{{'type': 'function', 'function': {{'name': ...}}}}, got {value!r}")


def check_response_format(name: str, value: Any) -> dict | None:
    """{"type": "text" | "json_object"} or {"type": "json_schema", "json_schema": {"name",
    "schema", "strict"}} (the Responses API's flat {"type": "json_schema", "schema": ...} too)
    -> None (free text) or {"type", "schema"}."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in RESPONSE_FORMATS:
        raise GrammarError(f"option {name!r} must be an object with 'type' one of "
                           f"{', '.join(RESPONSE_FORMATS)}, got {value!r}")
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": kind, "schema": {"type": "object"}}
    spec = value.get("json_schema", value)
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if schema is None:
        schema = {}
    if not isinstance(schema, (dict, bool)):
        raise GrammarError(f"option {name!r}: json_schema.schema must be a JSON schema object")
    return {"type": kind, "schema": schema}


# ----------------------------------------------------------------------------- the tokenizer side

def ll_tokenizer(tokenizer, vocab_size: int, eos: list[int]):
    """llguidance's view of our tokenizer (built once per Tokenizer and vocabulary size)."""
    import llguidance

    cache = tokenizer.__dict__.setdefault("_llguidance", {})
    key = (vocab_size, tuple(eos))
    if key not in cache:
        cache[key] = llguidance.LLTokenizer(tokenizer._tok.to_str(), n_vocab=vocab_size, eos_token=list(eos))
    return cache[key]


# ----------------------------------------------------------------------------- schema -> Lark

class _Lark:
    """Lark rules for Python-literal values that follow a JSON schema (what LFM2 writes as a call's
    keyword arguments): True/False/None, strings and numbers as in JSON, lists, dicts with string
    keys. Properties come in the schema's order (required ones always, optional ones may be left
    out); keys not declared are refused unless `additionalProperties` allows them."""

    def __init__(self, root_schema: dict):
        self.rules: list[str] = []
        self.root = root_schema
        self.n = 0
        self.refs: dict[str, str] = {}
        self.any_value = None

    def rule(self, body: str) -> str:
        name = f"r{self.n}"
        self.n += 1
        self.rules.append(f"{name}: {body}")
        return name

    def value(self, schema: Any, where: str, depth: int = 0) -> str:
        if depth > MAX_SCHEMA_DEPTH:
            raise GrammarError(f"{where}: the schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
        if schema is True or schema == {}:
            return self.any()
        if schema is False:
            raise GrammarError(f"{where}: the schema 'false' admits no value")
        if not isinstance(schema, dict):
            raise GrammarError(f"{where} must be a JSON schema object, got {type(schema).__name__}")
        if "$ref" in schema:
            return self.ref(schema["$ref"], where, depth)
        if "const" in schema or "enum" in schema:
            values = [schema["const"]] if "const" in schema else schema["enum"]
            if not isinstance(values, list) or not values:
                raise GrammarError(f"{where}.enum must be a non-empty list")
            return self.rule(" | ".join(_lark_literal(text) for v in values for text in _spellings(v)))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                alts = schema[key]
                if not isinstance(alts, list) or not alts:
                    raise GrammarError(f"{where}.{key} must be a non-empty list of schemas")
                base = {k: v for k, v in schema.items() if k != key}
                return self.rule(" | ".join(self.value({**base, **a} if isinstance(a, dict) else a,
                                                       f"{where}.{key}[{i}]", depth + 1)
                                            for i, a in enumerate(alts)))
        kind = schema.get("type")
        if kind is None:  # untyped, or only constraints we check after generation (allOf, not, ...)
            return self.any()
        if isinstance(kind, list):
            if not kind:
                raise GrammarError(f"{where}.type must not be an empty list")
            return self.rule(" | ".join(self.value({**schema, "type": k}, where, depth + 1) for k in kind))
        if kind == "boolean":
            return self.rule('"True" | "False"')
        if kind == "null":
            return self.rule('"None"')
        if kind in ("string", "integer", "number"):
            leaf = {k: v for k, v in schema.items() if k in _LEAF_KEYS}
            if leaf == {"type": "string"}:
                return self.any_string()
            return self.rule(f"%json {json.dumps(leaf)}")  # its constraints hold on the JSON spelling
        if kind == "array":
            items = schema.get("items", True)
            if isinstance(items, list):  # old tuple form: not constrained, checked after generation
                items = True
            v = self.value(items, f"{where}.items", depth + 1)
            more = f'("[" {v} (", " {v})* "]")'
            return self.rule(more if schema.get("minItems", 0) > 0 else f'"[]" | {more}')
        if kind == "object":
            return self.object(schema, where, depth, dict_literal=True)
        raise GrammarError(f"{where}.type {kind!r} is not a JSON schema type")

    def object(self, schema: dict, where: str, depth: int, dict_literal: bool) -> str:
        """A dict literal `{"k": v, ...}`, or (dict_literal=False) keyword arguments `k=v, ...`."""
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise GrammarError(f"{where}.properties must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or any(k not in props for k in required):
            raise GrammarError(f"{where}.required must list names of its properties")
        # absent additionalProperties: no other keys (a call's arguments, an object that declares
        # properties); an object that declares none takes any keys
        extra = schema.get("additionalProperties", False if props or not dict_literal else True)
        entries = []
        for key, sub in props.items():
            if not dict_literal and not key.isidentifier():
                raise GrammarError(f"{where}.properties: {key!r} cannot be a keyword argument name")
            head = f"{key}=" if not dict_literal else f"{json.dumps(key, ensure_ascii=False)}: "
            v = self.value(sub, f"{where}.properties.{key}", depth + 1)
            entries.append((self.rule(f"{_lark_literal(head)} {v}"), key in required))
        tail_first = tail_rest = None
        if extra is not False:
            v = self.value(extra if isinstance(extra, dict) else True, f"{where}.additionalProperties", depth + 1)
            key = "IDENT" if not dict_literal else self.any_string()
            sep = '"="' if not dict_literal else '": "'
            kv = self.rule(f"{key} {sep} {v}")
            tail_first = self.rule(f'({kv} (", " {kv})*)?')
            tail_rest = self.rule(f'(", " {kv})*')
        # first[i] / rest[i]: the entries from i on, before / after some entry was written
        first, rest = tail_first, tail_rest
        for entry, needed in reversed(entries):
            nf = f"{entry} {rest}" if rest else entry
            nr = f'", " {entry} {rest}' if rest else f'", " {entry}'
            if not needed:
                nf = f"{nf} | {first}" if first else f"({nf})?"
                nr = f"{nr} | {rest}" if rest else f"({nr})?"
            first, rest = self.rule(nf), self.rule(nr)
        body = first or '""'
        return self.rule(f'"{{" {body} "}}"' if dict_literal else body)

    def ref(self, ref: Any, where: str, depth: int) -> str:
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise GrammarError(f"{where}.$ref {ref!r}: only local references (#/$defs/...) are supported")
        if ref not in self.refs:
            target: Any = self.root
            for part in ref[2:].split("/"):
                if not isinstance(target, dict) or part not in target:
                    raise GrammarError(f"{where}.$ref {ref!r} points to nothing")
                target = target[part]
            name = f"r{self.n}"
            self.n += 1
            self.refs[ref] = name  # before descending: recursive schemas refer to it
            self.rules.append(f"{name}: {self.value(target, ref, depth + 1)}")
        return self.refs[ref]

    def any_string(self) -> str:
        """A string literal in double quotes (as JSON writes it) or single quotes (as repr does)."""
        return self.rule('%json {"type": "string"} | SQ_STRING')

    def any(self) -> str:
        """Any JSON value, written as a Python literal."""
        if self.any_value is None:
            self.any_value = name = f"r{self.n}"
            self.n += 1
            s, num = self.any_string(), self.rule('%json {"type": "number"}')
            kv = self.rule(f'{s} ": " {name}')
            self.rules.append(f'{name}: {s} | {num} | "True" | "False" | "None" '
                              f'| "[" ({name} (", " {name})*)? "]" | "{{" ({kv} (", " {kv})*)? "}}"')
        return self.any_value


def call_block_grammar(tools: list[dict], single: bool) -> str:
    """Lark for what follows `<|tool_call_start|>`: `[f(a=1), g(b="x")]<|tool_call_end|>`, each
    call to a declared tool with arguments that follow its schema (one call when `single`)."""
    lark = _Lark({})
    calls = []
    for i, tool in enumerate(tools):
        fn = tool.get("function", tool)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        lark.root = params
        args = lark.object(params, f"tools[{i}].function.parameters", 0, dict_literal=False)
        calls.append(lark.rule(f'{_lark_literal(fn["name"] + "(")} {args} ")"'))
    call = lark.rule(" | ".join(calls))
    many = "" if single else f' (", " {call})*'
    header = [f'start: "[" {call}{many} "]" {TOOL_CALL_END}', r"IDENT: /[A-Za-z_][A-Za-z0-9_]*/",
              r"SQ_STRING: /'([^'\\\n\r\x00]|\\[^\x00])*'/"]
    return "\n".join(header + lark.rules)


def _py_literal(value: Any) -> str:
    """A JSON value as LFM2 writes it in a call: JSON spelling, with True/False/None."""
    if value is True:
        return "True"
    if value is False:
        return "False"
    if value is None:
        return "None"
    if isinstance(value, (int, float, str)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_py_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {_py_literal(v)}"
                               for k, v in value.items()) + "}"
    raise GrammarError(f"{value!r} is not a JSON value")


def _spellings(value: Any) -> list[str]:
    """The ways LFM2 may write a constant: a string in double or single quotes, anything else once."""
    text = _py_literal(value)
    return [text, repr(value)] if isinstance(value, str) and repr(value) != text else [text]


def _lark_literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


# ----------------------------------------------------------------------------- the plan

@dataclass
class Plan:
    """A request's constraints, compiled once: grammars and the token ids they turn on."""
    ll_tokenizer: Any
    vocab_size: int
    call_grammar: str | None      # Lark for a call block, None without tools
    json_grammar: str | None      # llguidance grammar for the whole answer (response_format)
    tool_choice: Any              # "auto" | "none" | "required" | {"name": ...}
    single_call: bool
    call_start: int | None
    think_start: int | None
    think_end: int | None

    def start(self, prompt_ids: list[int]) -> Constraint:
        return Constraint(self, _in_think(prompt_ids, self.think_start, self.think_end))


def plan(tokenizer, vocab_size: int, eos: list[int], tools: list[dict] | None, tool_choice: Any = "auto",
         parallel_tool_calls: bool = True, response_format: dict | None = None) -> Plan | None:
    """Compile a request's constraints -> a Plan, or None when nothing is constrained. Raises
    GrammarError naming the field for what cannot be honoured."""
    tool_choice = "auto" if tool_choice is None else tool_choice
    if tool_choice in ("required",) or isinstance(tool_choice, dict):
        if not tools:
            raise GrammarError("tool_choice: a tool call is required but no tools were given")
    if isinstance(tool_choice, dict):
        names = [t.get("function", t).get("name") for t in tools]
        if tool_choice["name"] not in names:
            raise GrammarError(f"tool_choice: {tool_choice['name']!r} is not one of the tools "
                               f"({', '.join(map(str, names))})")
        tools = [t for t, n in zip(tools, names, strict=True) if n == tool_choice["name"]]
    if tool_choice == "none":
        tools = None
    if not tools and response_format is None and tool_choice != "none":
        return None
    if response_format is not None and tools and tool_choice != "auto":
        raise GrammarError("response_format: a JSON answer cannot also be a required tool call")
    if not available():
        if response_format is not None or tool_choice != "auto":
            raise GrammarError("response_format and tool_choice need the llguidance package "
                               "(pip install llguidance)")
        return None  # tool calls are still parsed and checked after generation
    import llguidance

    ids = {s: tokenizer.token_to_id(s) for s in (TOOL_CALL_START, TOOL_CALL_END, THINK_START, THINK_END)}
    call_grammar = None
    if tools:
        if ids[TOOL_CALL_START] is None or ids[TOOL_CALL_END] is None:
            if tool_choice != "auto":
                raise GrammarError("tool_choice: this model's tokenizer has no tool-call tokens")
            tools = None
        else:
            call_grammar = llguidance.LLMatcher.grammar_from_lark(
                call_block_grammar(tools, single=not parallel_tool_calls))
    json_grammar = None
    if response_format is not None:
        try:
            json_grammar = llguidance.LLMatcher.grammar_from_json_schema(
                response_format["schema"], defaults={"whitespace_flexible": False})
        except (ValueError, TypeError) as e:
            raise GrammarError(f"response_format: the schema is not usable ({e})") from None
    if call_grammar is None and json_grammar is None and tool_choice == "auto":
        return None
    ll = ll_tokenizer(tokenizer, vocab_size, eos)
    for g, field in ((call_grammar, "tools"), (json_grammar, "response_format")):
        if g is not None:
            failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(g, ll)
            if failed:
                raise GrammarError(f"{field}: the grammar does not compile ({'; '.join(messages)})")
    return Plan(ll, vocab_size, call_grammar, json_grammar, tool_choice, not parallel_tool_calls,
                ids[TOOL_CALL_START], ids[THINK_START], ids[THINK_END])


def _in_think(prompt_ids: list[int], start: int | None, end: int | None) -> bool:
    """Did the prompt open a think block it did not close (a template that ends with `<think>`)?"""
    if start is None:
        return False
    tail = prompt_ids[-8:]
    last_start = max((i for i, t in enumerate(tail) if t == start), default=-1)
    last_end = max((i for i, t in enumerate(tail) if t == end), default=-1)
    return last_start > last_end


def arguments_error(ll_tokenizer, tool: dict, arguments: dict) -> str | None:
    """Why `arguments` do not follow the tool's `parameters` schema (None: they do), checked by
    llguidance's own JSON-schema matcher on their JSON text: the full schema, so also what a
    call-block grammar leaves to be checked after generation."""
    import llguidance

    schema = _closed(tool.get("function", tool).get("parameters") or {"type": "object"}, top=True)
    # lenient: keywords llguidance does not implement (uniqueItems, not, dependentRequired...) are
    # left unchecked rather than refusing every call; oneOf is checked as anyOf
    m = llguidance.LLMatcher(ll_tokenizer, llguidance.LLMatcher.grammar_from_json_schema(
        schema, defaults={"whitespace_flexible": False, "coerce_one_of": True, "lenient": True}), log_level=0)
    if m.is_error():
        return f"the schema is not usable ({m.get_error()})"
    order = list(schema.get("properties", {})) if isinstance(schema, dict) else []
    ranked = dict(sorted(arguments.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    text = json.dumps(ranked, ensure_ascii=False, separators=(",", ":"))  # keys in the schema's order
    ids = ll_tokenizer.tokenize_str(text)
    if m.try_consume_tokens(ids) != len(ids) or not m.is_accepting():
        return f"{text} does not follow the schema"
    return None


def _closed(schema: Any, top: bool = False) -> Any:
    """A copy of a tool's schema with additionalProperties made false where the call grammar takes
    it as false (absent, on the arguments and on every object that declares properties)."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, dict):
            out[key] = {k: _closed(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "prefixItems", "not"):
            out[key] = _closed(value)
        else:
            out[key] = value
    if "additionalProperties" not in out and (top or out.get("properties")):
        out["additionalProperties"] = False
    return out


def check_calls(tools: list[dict] | None, calls: list[dict], ll_tokenizer=None) -> tuple[list[dict], list[dict]]:
    """Split parsed calls into (valid, rejected): a valid call names a declared tool and, with
    llguidance, its arguments follow that tool's full schema. Under the grammar every call is
    valid by construction except for the keywords it leaves to this check (docs/STRUCTURED.md)."""
    if not tools:
        return calls, []
    by_name = {t.get("function", t).get("name"): t for t in tools}
    valid, rejected = [], []
    for call in calls:
        tool = by_name.get(call["name"])
        bad = tool is None or (ll_tokenizer is not None and arguments_error(ll_tokenizer, tool, call["arguments"]))
        (rejected if bad else valid).append(call)
    return valid, rejected


# ----------------------------------------------------------------------------- per answer

class Constraint:
    """The mask for the next token of one answer, and its state as ids are sampled."""

    def __init__(self, plan: Plan, in_think: bool):
        self.plan = plan
        self.in_think = in_think
        self.may_think = plan.think_start is not None and not in_think  # before anything else is written
        self.blocks = 0
        self.matcher = self._matcher(plan.json_grammar) if plan.json_grammar else None
        self.fresh = self.matcher is not None  # the answer's matcher has consumed nothing yet
        self._bitmask = None

    def _matcher(self, grammar: str):
        import llguidance

        m = llguidance.LLMatcher(self.plan.ll_tokenizer, grammar, log_level=0)
        if m.is_error():
            raise GrammarError(f"grammar: {m.get_error()}")
        return m

    def allowed(self) -> np.ndarray | None:
        """(V,) bool: the ids that may come next; None when any may."""
        p = self.plan
        if self.in_think:
            return None
        if self.matcher is not None:
            mask = self._mask(self.matcher)
            if self.fresh and self.may_think:
                mask[p.think_start] = True
            return mask
        if p.tool_choice == "none" or (p.call_grammar is None) or (p.single_call and self.blocks):
            return self._only(p.call_start, False) if p.call_start is not None else None
        if self.blocks == 0 and p.tool_choice != "auto":  # "required" or a named tool: a call first
            mask = self._only(p.call_start, True)
            if self.may_think:
                mask[p.think_start] = True
            return mask
        return None

    def advance(self, token: int) -> None:
        p = self.plan
        first, self.may_think = self.may_think, False
        if self.in_think:
            self.in_think = token != p.think_end
            return
        if first and token == p.think_start:
            self.in_think = True
            return
        if self.matcher is not None:
            if not self.matcher.consume_token(token):
                raise GrammarError(f"grammar: token {token} was refused ({self.matcher.get_error()})")
            self.fresh = False
            if self.matcher.is_stopped() and p.json_grammar is None:
                self.matcher = None  # the call block is closed: back to free text
            return
        if token == p.call_start and p.call_grammar is not None and not (p.single_call and self.blocks):
            self.matcher = self._matcher(p.call_grammar)
            self.blocks += 1

    def _mask(self, matcher) -> np.ndarray:
        import llguidance.numpy as lln

        if self._bitmask is None:
            self._bitmask = lln.allocate_token_bitmask(1, self.plan.vocab_size)
        lln.fill_next_token_bitmask(matcher, self._bitmask, 0)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")[:self.plan.vocab_size]
        return bits.view(np.bool_)

    def _only(self, token: int, value: bool) -> np.ndarray:
        mask = np.full(self.plan.vocab_size, not value, dtype=np.bool_)
        mask[token] = value
        return mask


__all__ = ["Constraint", "GrammarError", "Plan", "available", "call_block_grammar", "check_response_format",
           "check_tool_choice", "plan"]
