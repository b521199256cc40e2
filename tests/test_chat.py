"""Chat template rendering (cactus.chat): the model's own template, held to transformers' rendering."""

import json

import pytest
from chat_helpers import write_tokenizer

from cactus.chat import ChatTemplate, validate_messages, validate_tools
from cactus.tokenizer import Tokenizer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
RUN_CODE = {"type": "function", "function": {
    "name": "run_code", "description": "Execute Python code and return the output",
    "parameters": {"type": "object", "properties": {"code": {"type": "string", "description": "Python code"}},
                   "required": ["code"]}}}

USER = [{"role": "user", "content": "x"}]
CONVERSATIONS = [
    ("user only", [{"role": "user", "content": "Hello"}], None),
    ("system", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], None),
    ("multi turn", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "Sort [3, 1]"}], None),
    ("tools", [{"role": "user", "content": "Weather in Paris?"}], [WEATHER]),
    ("system and two tools", [{"role": "system", "content": "S"}, {"role": "user", "content": "x"}],
     [WEATHER, RUN_CODE]),
    ("tool result", [{"role": "user", "content": "Weather?"},
                     {"role": "assistant",
                      "content": "<|tool_call_start|>[get_weather(city='Paris')]<|tool_call_end|>"},
                     {"role": "tool", "content": "{\"temp\": 21}"}], [WEATHER]),
    ("unicode", [{"role": "user", "content": "日本語 🎉 \"quoted\" <b>"}], None),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def hf_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def template(model_dir):
    return ChatTemplate.from_dir(model_dir, Tokenizer(model_dir).template_tokens())


@pytest.mark.parametrize("messages, tools", [c[1:] for c in CONVERSATIONS], ids=[c[0] for c in CONVERSATIONS])
def test_render_matches_transformers(template, hf_tokenizer, messages, tools):
    expected = hf_tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                                tokenize=False)
    assert template.render(messages, tools=tools) == expected


def test_rendered_ids_match_transformers(template, hf_tokenizer, model_dir):
    messages = CONVERSATIONS[3][1]
    expected = hf_tokenizer.apply_chat_template(messages, tools=[WEATHER], add_generation_prompt=True,
                                                tokenize=True, return_dict=False)
    ids = Tokenizer(model_dir).encode(template.render(messages, tools=[WEATHER]))
    assert ids == list(expected)


def test_render_starts_with_bos_and_ends_with_generation_prompt(template):
    text = template.render([{"role": "user", "content": "Hi"}])
    assert text == "<|startoftext|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_no_generation_prompt(template):
    text = template.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert not text.endswith("<|im_start|>assistant\n")


def test_tools_rendered_as_json_list(template):
    text = template.render([{"role": "user", "content": "x"}], tools=[WEATHER])
    schema = json.dumps(WEATHER, ensure_ascii=False)
    expected = f"List of tools: <|tool_list_start|>[{schema}]<|tool_list_end|>"
    assert expected in text


def test_assistant_tool_calls_rendered_as_model_writes_them(template):
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    text = template.render(messages, tools=[WEATHER])
    assert ("<|im_start|>assistant\n"
            "<|tool_call_start|>[get_weather(city='Paris')]<|tool_call_end|><|im_end|>\n"
            "<|im_start|>tool\n<|tool_response_start|>sunny<|tool_response_end|><|im_end|>\n") in text


def test_tool_calls_precede_content(template):
    messages = [{"role": "user", "content": "x"},
                {"role": "assistant", "content": "Checking.",
                 "tool_calls": [{"name": "f", "arguments": {"a": 1}}]}]
    text = template.render(messages, add_generation_prompt=False)
    assert text.endswith("<|im_start|>assistant\n"
                         "<|tool_call_start|>[f(a=1)]<|tool_call_end|>Checking.<|im_end|>\n")


def test_template_that_renders_tool_calls_gets_them():
    source = ("{% for m in messages %}{% for c in m.tool_calls or [] %}"
              "<{{ c.function.name }}>{% endfor %}{% endfor %}")
    call = {"type": "function", "function": {"name": "f", "arguments": {}}}
    messages = [{"role": "assistant", "tool_calls": [call]}]
    assert ChatTemplate(source).render(messages) == "<f>"


def test_template_from_tokenizer_config(tmp_path, template):
    d = write_tokenizer(tmp_path, template_file=False)
    assert not (d / "chat_template.jinja").exists()
    messages = [{"role": "user", "content": "Hi"}]
    other = ChatTemplate.from_dir(d, Tokenizer(d).template_tokens())
    assert other.render(messages) == template.render(messages)


def test_named_templates_pick_tool_use():
    t = ChatTemplate({"default": "plain", "tool_use": "with tools"})
    assert (t.render([{"role": "user", "content": "x"}]),
            t.render([{"role": "user", "content": "x"}], tools=[WEATHER])) == ("plain", "with tools")


def test_missing_template_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        ChatTemplate.from_dir(tmp_path)


def test_raise_exception_becomes_value_error():
    with pytest.raises(ValueError, match="no system allowed"):
        ChatTemplate("{{ raise_exception('no system allowed') }}").render([{"role": "user", "content": "x"}])


def test_sandbox_blocks_attribute_escape():
    with pytest.raises(ValueError):
        ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}").render(USER)


def test_sandbox_is_immutable():
    with pytest.raises(ValueError):
        ChatTemplate("{{ messages.append(1) }}").render([{"role": "user", "content": "x"}])


def test_strftime_now_available():
    assert ChatTemplate("{{ strftime_now('%Y') }}").render([{"role": "user", "content": "x"}]).isdigit()


def test_tojson_keeps_unicode_and_html():
    text = ChatTemplate("{{ messages[0].content | tojson }}").render([{"role": "user", "content": "é<b>"}])
    assert text == '"é<b>"'


def test_trim_and_lstrip_blocks():
    source = "{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}"
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert ChatTemplate(source).render(messages) == "a\nb\n"


def test_generation_tag_renders_body():
    assert ChatTemplate("{% generation %}x{% endgeneration %}").render(USER) == "x"


def test_content_parts_are_joined(template):
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    joined = template.render([{"role": "user", "content": "Hello"}])
    assert template.render([{"role": "user", "content": parts}]) == joined


def test_messages_as_json_string(template):
    messages = [{"role": "user", "content": "Hi"}]
    assert template.render(json.dumps(messages)) == template.render(messages)


def test_validate_messages_does_not_touch_input():
    messages = [{"role": "user", "content": "Hi", "name": None}]
    validate_messages(messages)[0]["content"] = "changed"
    assert messages == [{"role": "user", "content": "Hi", "name": None}]


BAD_MESSAGES = [
    ("not a list", {"role": "user", "content": "x"}, "non-empty list"),
    ("empty", [], "non-empty list"),
    ("bad json", "[{", "not valid JSON"),
    ("not an object", ["hi"], r"messages\[0\] must be an object"),
    ("unknown role", [{"role": "bot", "content": "x"}], r"messages\[0\]\.role"),
    ("missing role", [{"content": "x"}], r"messages\[0\]\.role"),
    ("no content", [{"role": "user"}], r"messages\[0\] has no content"),
    ("content not string", [{"role": "user", "content": 5}], r"messages\[0\]\.content must be a string"),
    ("bad content part", [{"role": "user", "content": [{"type": "image"}]}], r"messages\[0\]\.content\[0\]"),
    ("tool_calls on user", [{"role": "user", "content": "x", "tool_calls": []}], "only assistant"),
    ("tool_calls not list", [{"role": "assistant", "tool_calls": {}}], "must be a list"),
    ("tool call without name", [{"role": "assistant", "tool_calls": [{"arguments": {}}]}],
     r"tool_calls\[0\]"),
    ("second message bad", [{"role": "user", "content": "x"}, {"role": "x", "content": "y"}],
     r"messages\[1\]"),
    ("reasoning on user", [{"role": "user", "content": "x", "thinking": "r"}],
     r"messages\[0\]: only assistant messages carry thinking"),
    ("reasoning not string", [{"role": "assistant", "content": "x", "reasoning_content": ["r"]}],
     r"messages\[0\]\.reasoning_content must be a string, got list"),
    ("reasoning spellings differ", [{"role": "assistant", "content": "x", "reasoning_content": "a", "thinking": "b"}],
     r"messages\[0\]: reasoning_content and thinking differ"),
]


@pytest.mark.parametrize("messages, error", [c[1:] for c in BAD_MESSAGES], ids=[c[0] for c in BAD_MESSAGES])
def test_validate_messages_rejects(messages, error):
    with pytest.raises(ValueError, match=error):
        validate_messages(messages)


def _fn(**fields):
    return [{"type": "function", "function": fields}]


BAD_TOOLS = [
    ("not a list", {"name": "f"}, "must be a list"),
    ("bad json", "[", "not valid JSON"),
    ("not an object", ["f"], r"tools\[0\] must be an object"),
    ("wrong type", [{"type": "retrieval", "function": {"name": "f"}}], r"tools\[0\]\.type"),
    ("function not object", [{"type": "function", "function": "f"}], r"tools\[0\]\.function must be"),
    ("no name", _fn(description="d"), r"tools\[0\]\.function\.name"),
    ("name with dash", _fn(name="get-weather"), r"\.name must be an identifier"),
    ("description not string", _fn(name="f", description=1), "description"),
    ("parameters not object", _fn(name="f", parameters=[]), "parameters must be"),
    ("parameters type", _fn(name="f", parameters={"type": "string"}), r"parameters\.type"),
    ("properties not object", _fn(name="f", parameters={"type": "object", "properties": []}),
     "properties must"),
    ("property not schema", _fn(name="f", parameters={"properties": {"a": 1}}), r"properties\.a"),
    ("required not list", _fn(name="f", parameters={"properties": {}, "required": "a"}), "required must"),
    ("required unknown", _fn(name="f", parameters={"properties": {"a": {}}, "required": ["b"]}),
     r"required\[0\]: 'b'"),
]


@pytest.mark.parametrize("tools, error", [c[1:] for c in BAD_TOOLS], ids=[c[0] for c in BAD_TOOLS])
def test_validate_tools_rejects(tools, error):
    with pytest.raises(ValueError, match=error):
        validate_tools(tools)


def test_validate_tools_accepts_bare_function_form():
    tools = validate_tools([{"name": "f", "parameters": {"type": "object", "properties": {}}}])
    assert tools[0]["name"] == "f"



def test_reasoning_spellings_agreeing_or_empty():
    same = validate_messages([{"role": "assistant", "content": "x", "reasoning_content": "r", "thinking": "r"}])[0]
    assert (same["thinking"], same["reasoning_content"]) == ("r", "r")
    empty = validate_messages([{"role": "assistant", "content": "x", "thinking": ""}])[0]
    assert empty == {"role": "assistant", "content": "x"}


@pytest.mark.parametrize("value, rendered", [(None, "unset"), (True, "True"), (False, "False")])
def test_enable_thinking_reaches_the_template_only_when_set(value, rendered):
    t = ChatTemplate("{{ enable_thinking if enable_thinking is defined else 'unset' }}")
    assert t.render(USER, enable_thinking=value) == rendered


def test_enable_thinking_must_be_a_bool():
    with pytest.raises(ValueError, match="enable_thinking must be true, false or null, got 'yes'"):
        ChatTemplate("x").render(USER, enable_thinking="yes")


def test_template_gets_tool_call_arguments_parsed():
    """OpenAI sends arguments as a JSON string; templates that render tool_calls read a mapping."""
    source = "{% for c in messages[0].tool_calls %}{{ c.id }}:{{ c.function.arguments.city }}{% endfor %}"
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"city\": \"Paris\"}"}}
    assert ChatTemplate(source).render([{"role": "assistant", "tool_calls": [call]}]) == "c1:Paris"
