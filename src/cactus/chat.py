"""The model's own chat template, rendered with jinja2 in a sandbox the way transformers renders it,
and the checks on what goes into it (messages, OpenAI-style tool schemas).

Assistant messages with OpenAI-style `tool_calls` become the text LFM2 writes for them
(`<|tool_call_start|>[name(k=v)]<|tool_call_end|>` + content) unless the template renders
`tool_calls` itself. Their reasoning (`reasoning_content` or `thinking`) goes to the template under
both names where it reads one (LFM2.5-8B-A1B / -2.6B read `thinking`), as `<think>...</think>` before
the content where it only knows the tags (LFM2.5-1.2B strips them from past turns itself), and
nowhere for a template that never reasons.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .tools import format_tool_calls, normalize_call

ROLES = ("system", "user", "assistant", "tool")
REASONING_KEYS = ("reasoning_content", "thinking")  # OpenAI-compatible servers' name, the templates' name
THINK_START, THINK_END = "<think>", "</think>"
_READS_REASONING = re.compile(r"\b(?:thinking|reasoning_content)\b")  # not keep_past_thinking & co


class ChatTemplate:
    """A chat template (Jinja source) plus the special tokens it may refer to."""

    def __init__(self, source: str | dict[str, str], special_tokens: dict[str, str] | None = None,
                 file: str | Path | None = None):
        named = source if isinstance(source, dict) else {"default": source}
        if not named or not all(isinstance(v, str) for v in named.values()):
            raise ValueError(f"{file or 'chat template'}: a chat template must be a string or a "
                             "{name: string} mapping")
        self.templates = named
        self.special_tokens = dict(special_tokens or {})
        self.file = file  # where it was read from, for error messages

    @classmethod
    def from_dir(cls, path: str | Path, special_tokens: dict[str, str] | None = None) -> ChatTemplate:
        """Read the template of a model directory: chat_template.jinja, chat_template.json, or
        tokenizer_config.json's `chat_template` (a string or a list of named templates)."""
        from .tokenizer import read_json_object

        path = Path(path)
        file = path / "chat_template.jinja"
        if file.is_file():
            try:
                return cls(file.read_bytes().decode("utf-8"), special_tokens, file)
            except UnicodeDecodeError as e:
                raise ValueError(f"{file}: not valid UTF-8 at byte {e.start}") from None
        for name in ("chat_template.json", "tokenizer_config.json"):
            file = path / name
            if file.is_file():
                value = read_json_object(file).get("chat_template")
                if isinstance(value, list):  # [{"name": ..., "template": ...}], as transformers stores them
                    if not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in value):
                        raise ValueError(f"{file}: chat_template must be a string or a list of "
                                         "{name, template} objects")
                    value = {t["name"]: t.get("template") for t in value}
                if value:
                    return cls(value, special_tokens, file)
        raise FileNotFoundError(f"{path}: no chat template (chat_template.jinja or tokenizer_config.json)")

    def check(self) -> None:
        """Compile every template and render a one-message conversation, so a broken template
        fails when the model is opened (naming its file), not on every turn after."""
        where = self.file or "chat template"
        for name, source in self.templates.items():
            try:
                _compile(source)
            except ValueError as e:
                raise ValueError(f"{where}: {e}" if len(self.templates) == 1 else f"{where} ({name}): {e}") from None
        try:
            self.render([{"role": "user", "content": "Hello"}])
        except ValueError as e:
            raise ValueError(f"{where}: rendering a one-message conversation fails ({e})") from None

    def source(self, tools: bool = False) -> str:
        if tools and "tool_use" in self.templates:
            return self.templates["tool_use"]
        if "default" in self.templates:
            return self.templates["default"]
        if len(self.templates) == 1:
            return next(iter(self.templates.values()))
        raise ValueError(f"the model has several chat templates {sorted(self.templates)} "
                         "and none is 'default'")

    def render(self, messages: Any, tools: Any = None, add_generation_prompt: bool = True,
               enable_thinking: bool | None = None, **extra) -> str:
        """Messages (+ tools) -> the prompt text, exactly as the model was trained to read it.
        `enable_thinking` reaches templates that read it (None leaves it out: the template's
        default); `extra` are further template variables (`preserve_thinking`, ...)."""
        messages = validate_messages(messages)
        tools = validate_tools(tools)
        source = self.source(tools=bool(tools))
        if "tool_calls" not in source:  # the template does not know tool calls: write them as LFM2 does
            messages = [_inline_tool_calls(m) for m in messages]
        if not _READS_REASONING.search(source):
            messages = [_inline_reasoning(m, THINK_END in source) for m in messages]
        if enable_thinking is not None:
            if not isinstance(enable_thinking, bool):
                raise ValueError(f"enable_thinking must be true, false or null, got {enable_thinking!r:.60}")
            extra["enable_thinking"] = enable_thinking
        context = dict(self.special_tokens, **extra)
        try:
            return _compile(source).render(messages=messages, tools=tools, documents=None,
                                           add_generation_prompt=add_generation_prompt, **context)
        except Exception as e:  # noqa: BLE001 - the template is the model's code: any failure is its error
            detail = str(e) if isinstance(e, jinja2.TemplateError) else f"{type(e).__name__}: {e}"
            raise ValueError(f"chat template: {detail}") from None


def _from_json(value: Any, what: str) -> Any:
    """Callers may pass messages / tools as a JSON string: parse it, naming `what` on error."""
    if not isinstance(value, (str, bytes)):
        return value
    try:
        return json.loads(value)
    except ValueError as e:
        raise ValueError(f"{what}: not valid JSON ({e})") from None


def validate_messages(messages: Any) -> list[dict]:
    """Check a conversation -> a fresh plain copy (keys with value None dropped, as transformers does).

    Raises ValueError naming the first thing wrong, e.g. "messages[1].role: ...".
    """
    messages = _from_json(messages, "messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ValueError(f"{where} must be an object, got {type(message).__name__}")
        message = {k: v for k, v in _plain(message, where).items() if v is not None}
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}.role must be one of {', '.join(ROLES)}; got {role!r}")
        if "tool_calls" in message:
            if role != "assistant":
                raise ValueError(f"{where}: only assistant messages carry tool_calls")
            calls = message["tool_calls"]
            if not isinstance(calls, list):
                raise ValueError(f"{where}.tool_calls must be a list")
            message["tool_calls"] = [_template_call(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(calls)]
        _check_reasoning(message, where)
        content = message.get("content")
        if content is None:
            if not message.get("tool_calls"):
                raise ValueError(f"{where} has no content")
        elif isinstance(content, list) and role != "tool":
            message["content"] = _join_text_parts(content, f"{where}.content")
        elif not isinstance(content, str) and role != "tool":  # tool results may be any JSON value
            raise ValueError(f"{where}.content must be a string, got {type(content).__name__}")
        out.append(message)
    return out


def validate_tools(tools: Any) -> list[dict] | None:
    """Check OpenAI-style tool schemas -> a plain copy, or None for no tools.

    `{"type": "function", "function": {"name", "description", "parameters": {JSON schema}}}`;
    the bare inner `{"name", ...}` form is accepted too. Raises ValueError naming the field.
    """
    if tools is None:
        return None
    tools = _from_json(tools, "tools")
    if not isinstance(tools, list):
        raise ValueError("tools must be a list of tool schemas")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise ValueError(f"{where} must be an object, got {type(tool).__name__}")
        tool = _plain(tool, where)
        fn = tool
        if "function" in tool or "type" in tool:
            if tool.get("type") != "function":
                raise ValueError(f"{where}.type must be 'function', got {tool.get('type')!r}")
            fn, where = tool.get("function"), where + ".function"
            if not isinstance(fn, dict):
                raise ValueError(f"{where} must be an object")
        name = fn.get("name")
        if not isinstance(name, str) or not name or not all(p.isidentifier() for p in name.split(".")):
            raise ValueError(f"{where}.name must be an identifier (letters, digits, _), got {name!r}")
        if not isinstance(fn.get("description", ""), str):
            raise ValueError(f"{where}.description must be a string")
        if "parameters" in fn:
            _check_parameters(fn["parameters"], f"{where}.parameters")
        out.append(tool)
    return out


def _check_parameters(params: Any, where: str) -> None:
    if not isinstance(params, dict):
        raise ValueError(f"{where} must be a JSON-schema object")
    if params.get("type", "object") != "object":
        raise ValueError(f"{where}.type must be 'object', got {params.get('type')!r}")
    props = params.get("properties", {})
    if not isinstance(props, dict):
        raise ValueError(f"{where}.properties must be an object")
    for key, schema in props.items():
        if not isinstance(schema, dict):
            raise ValueError(f"{where}.properties.{key} must be a JSON-schema object")
    required = params.get("required", [])
    if not isinstance(required, list):
        raise ValueError(f"{where}.required must be a list of property names")
    for j, key in enumerate(required):
        if not isinstance(key, str) or key not in props:
            raise ValueError(f"{where}.required[{j}]: {key!r} is not one of the properties")


def _template_call(call: Any, where: str) -> dict:
    """A tool call in the form HF chat templates read: {"type": "function", "function": {"name",
    "arguments": {...}}}, arguments parsed (OpenAI sends them as a JSON string; LFM2.5's templates
    iterate them as a mapping). The call's id is kept."""
    try:
        name, arguments = normalize_call(call)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    out = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return {"id": call["id"], **out} if "id" in call else out


def _check_reasoning(message: dict, where: str) -> None:
    """An assistant message's reasoning, under either name -> the same text under both ("" = none)."""
    given = {k: message.pop(k) for k in REASONING_KEYS if k in message}
    if not given:
        return
    if message["role"] != "assistant":
        raise ValueError(f"{where}: only assistant messages carry {' / '.join(given)}")
    for key, value in given.items():
        if not isinstance(value, str):
            raise ValueError(f"{where}.{key} must be a string, got {type(value).__name__}")
    if len(set(given.values())) > 1:
        raise ValueError(f"{where}: reasoning_content and thinking differ; send the reasoning once")
    text = next(iter(given.values()))
    if text:
        message.update(dict.fromkeys(REASONING_KEYS, text))


def _inline_reasoning(message: dict, knows_think_tags: bool) -> dict:
    """For a template that reads no reasoning field: `<think>r</think>` before the content where it
    knows the tags (it strips them from past turns itself), else the reasoning is dropped."""
    if not any(k in message for k in REASONING_KEYS):
        return message
    text = message[REASONING_KEYS[0]]
    message = {k: v for k, v in message.items() if k not in REASONING_KEYS}
    if knows_think_tags:
        message["content"] = f"{THINK_START}{text}{THINK_END}" + (message.get("content") or "")
    return message


def _inline_tool_calls(message: dict) -> dict:
    calls = message.get("tool_calls")
    if not calls:
        return message
    message = {k: v for k, v in message.items() if k != "tool_calls"}
    message["content"] = format_tool_calls(calls) + (message.get("content") or "")
    return message


def _join_text_parts(parts: list, where: str) -> str:
    """OpenAI content parts [{"type": "text", "text": ...}] -> one string (this model reads text only)."""
    texts = []
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ValueError(f"{where}[{j}] must be a {{'type': 'text', 'text': str}} part")
        texts.append(part["text"])
    return "".join(texts)


def _plain(value: Any, where: str) -> Any:
    """A fresh copy made of JSON types only, so the template sees nothing with methods of its own.
    Strings must be valid Unicode: a lone surrogate (JSON `"\\ud800"`) has no UTF-8 encoding."""
    if type(value) is str:
        return _text(value, where)
    if value is None or type(value) in (int, float, bool):
        return value
    if isinstance(value, dict):
        return {_text(str(k), f"{where} key"): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    for base in (bool, int, float, str):  # subclasses (enums, numpy scalars via .item()) -> base type
        if isinstance(value, base):
            return _plain(base(value), where)
    if hasattr(value, "item"):
        return _plain(value.item(), where)
    raise ValueError(f"{where}: {type(value).__name__} is not a JSON value")


def _text(s: str, where: str) -> str:
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{where}: not valid Unicode (lone surrogate at character {e.start})") from None
    return s


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask marker): render the body."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' override: no HTML escaping, unicode kept
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"chat template does not parse: {e}") from None


__all__ = ["REASONING_KEYS", "ROLES", "ChatTemplate", "validate_messages", "validate_tools"]
