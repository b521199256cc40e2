"""Reasoning split from the answer, and the one output parser (`cactus.tools.parse_output` /
`OutputParser`) behind generate(), the API, `cactus run` and the server, on real output strings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from chat_helpers import BOS, CHAT_TEMPLATE, EOS, PAD, ScriptedModel, tokenizer_json
from hypothesis import given, settings
from hypothesis import strategies as st

from cactus.api import Model, cactus_complete
from cactus.generate import Finish, Session, Think, Token, generate
from cactus.sampling import SamplingOptions
from cactus.tokenizer import Tokenizer
from cactus.tools import OutputParser, parse_output

S, E = "<|tool_call_start|>", "<|tool_call_end|>"
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": n, "parameters": CITY}} for n in ("get_weather", "text")]


def call(name, **arguments):
    return {"name": name, "arguments": arguments}


# ----------------------------------------------------------------------------- reasoning

REASONING_CASES = [
    # id, text, reasoning flag given to the parser, (content, reasoning, calls)
    ("think block then answer", "<think>\nplan it\n</think>\n\nAnswer.", None, ("Answer.", "plan it", [])),
    ("prompt opened the block", "plan</think>Answer", True, ("Answer", "plan", [])),
    ("only the closing tag", "plan</think>Answer", None, ("Answer", "plan", [])),
    ("whitespace after the tags trimmed", "<think>  \n a \n </think> \n b", None, ("b", "a", [])),
    ("only the first close counts", "<think>a</think>b</think>c", None, ("b</think>c", "a", [])),
    ("a call inside the reasoning is text", f"<think>maybe {S}[f(a=1)]{E}</think>ok", None,
     ("ok", f"maybe {S}[f(a=1)]{E}", [])),
    ("a call after the reasoning is a call", f"<think>x</think>{S}[f(a=1)]{E}", None, ("", "x", [call("f", a=1)])),
    ("no think block", "Just an answer.", None, ("Just an answer.", "", [])),
    ("a think tag later in the answer is text", "Hi <think>x</think>", None, ("Hi <think>x</think>", "", [])),
    ("unclosed reasoning at the end", "  <think>still going", None, ("", "still going", [])),
    ("prompt opened, model repeats <think>", "<think>a</think>b", True, ("b", "a", [])),
]


@pytest.mark.parametrize("text, flag, expected", [c[1:] for c in REASONING_CASES],
                         ids=[c[0] for c in REASONING_CASES])
def test_reasoning_split(text, flag, expected):
    out = parse_output(text, reasoning=flag)
    assert (out.content, out.reasoning, out.calls) == expected


# ----------------------------------------------------------------------------- tool-call robustness

CALL_CASES = [
    # id, text, (content, calls)
    ("python and json literals", f"{S}[f(a=True, b=true, c=None, d=null, e=False)]{E}",
     ("", [call("f", a=True, b=True, c=None, d=None, e=False)])),
    ("dotted name", f"{S}[Calendar.create_event(title='x')]{E}", ("", [call("Calendar.create_event", title="x")])),
    ("raw newline and tab in a string", f"{S}[write(text='a\nb\tc')]{E}", ("", [call("write", text="a\nb\tc")])),
    ("unescaped nested quotes in a shell command", f'{S}[bash(cmd="echo "hi" > f.txt")]{E}',
     ("", [call("bash", cmd='echo "hi" > f.txt')])),
    ("unescaped quotes beside a second argument", f"{S}[bash(cmd='grep 'a b' x', timeout=5)]{E}",
     ("", [call("bash", cmd="grep 'a b' x", timeout=5)])),
    ("a set is a list in written order", f"{S}[f(a={{3, 1}})]{E}", ("", [call("f", a=[3, 1])])),
    ("leading-zero integers", f"{S}[f(month=07, day=010)]{E}", ("", [call("f", month=7, day=10)])),
    ("NUL and control bytes in a string", f"{S}[f(s='a\x00b\x01c\x7f')]{E}", ("", [call("f", s="a\x00b\x01c\x7f")])),
    ("a malformed call beside good ones", f"{S}[f(a=1), g(1), h(b=2)]{E}",
     (f"{S}[g(1)]{E}", [call("f", a=1), call("h", b=2)])),
    ("text after the block stays content", f"{S}[f(a=1)]{E} Done.", (" Done.", [call("f", a=1)])),
    ("body echoed after the end marker", f"{S}[f(a=1)]{E}[f(a=1)]", ("", [call("f", a=1)])),
    ("unbracketed echo dropped, the rest kept", f"{S}[f(a=1)]{E} f(a=1) then", (" then", [call("f", a=1)])),
    ("stray end marker", f"Hello {E}", ("Hello ", [])),
    ("json form", f'{S}[{{"name": "f", "arguments": {{"a": [1, 2]}}}}]{E}', ("", [call("f", a=[1, 2])])),
    ("markdown link stays content", "See [text](http://x.y) ok", ("See [text](http://x.y) ok", [])),
    ("bare call of a declared tool opening the answer", "[get_weather(city='Paris')]",
     ("", [call("get_weather", city="Paris")])),
    ("bare call of an undeclared name is text", "[nope(city='Paris')]", ("[nope(city='Paris')]", [])),
    ("bare call later in the answer is text", "Sure: [get_weather(city='Paris')]",
     ("Sure: [get_weather(city='Paris')]", [])),
    ("bare declared name as a markdown link", "[text](http://x.y)", ("[text](http://x.y)", [])),
    ("unterminated block that parses", f"a{S}[f(b=2)]", ("a", [call("f", b=2)])),
    ("unterminated block that is cut", f"a{S}[f(b=", (f"a{S}[f(b=", [])),
    ("eval is never used", f"{S}[f(a=__import__('os').getcwd())]{E}", (f"{S}[f(a=__import__('os').getcwd())]{E}", [])),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in CALL_CASES], ids=[c[0] for c in CALL_CASES])
def test_tool_call_parsing(text, expected):
    out = parse_output(text, TOOLS)
    assert (out.content, out.calls) == expected and out.reasoning == ""


ALL_TEXTS = [c[1] for c in REASONING_CASES] + [c[1] for c in CALL_CASES] + [
    f"<think>a {S}b</think>{S}[f(s='</think>')]{E} end", "a<|tool_", "x" * 50 + "</thi", "[get_wea"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_TEXTS), st.lists(st.integers(0, 200), max_size=12), st.sampled_from([None, True]))
def test_streaming_gives_the_same_result_as_the_whole_text(text, cuts, flag):
    whole = parse_output(text, TOOLS, reasoning=flag)
    flag = whole.reasoning != "" if flag is None and "<think>" not in text else flag  # what generate() knows
    parser = OutputParser(TOOLS, reasoning=bool(flag))
    bounds = sorted({min(c, len(text)) for c in cuts}) + [len(text)]
    content, reasoning, start = [], [], 0
    for b in bounds:
        c, r = parser.feed(text[start:b])
        content.append(c)
        reasoning.append(r)
        start = b
    c, r = parser.close()
    assert ("".join(content) + c, "".join(reasoning) + r, parser.calls) == \
        (whole.content, whole.reasoning, whole.calls)


# ----------------------------------------------------------------------------- generate() on think ids

@pytest.fixture(scope="module")
def think_dir(tmp_path_factory):
    """A tokenizer with `<think>`/`</think>` as special tokens (ids after the vocabulary's end)."""
    import tokenizers

    path = tmp_path_factory.mktemp("think")
    tok = tokenizers.Tokenizer.from_str(tokenizer_json())
    tok.add_special_tokens(["<think>", "</think>"])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}))
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return path


class Scripted(ScriptedModel):
    """ScriptedModel over the think tokenizer; `confidences[i]`: the i-th answer step's probability."""

    def __init__(self, path, script, confidences=None, **kw):
        super().__init__(path, script, **kw)
        self.config.vocab_size = Tokenizer(path).vocab_size
        self.confidences = confidences

    def forward(self, ids, last_only=False):
        if self.confidences is not None:
            step = 0 if len(ids) > 1 else self.step + 1
            self.confidence = self.confidences[min(step, len(self.confidences) - 1)]
        return super().forward(ids, last_only)


def events(path, text, prompt_text="<|im_start|>assistant\n", confidences=None, **options):
    tok = Tokenizer(path)
    model = Scripted(path, tok.encode(text), confidences, eos=tok.token_to_id(EOS))
    out = list(generate(Session(model), tok, tok.encode(prompt_text), SamplingOptions(**options)))
    return out[:-1], out[-1], tok


def test_think_ids_split_reasoning_from_answer(think_dir):
    tokens, finish, tok = events(think_dir, "<think>\nThe user greets.\n</think>\n\nHello!")
    think = Think(tok)
    assert think.by_id and think.open_id == tok.token_to_id("<think>")
    assert "".join(t.text for t in tokens) == "Hello!"
    assert "".join(t.reasoning for t in tokens) == finish.reasoning == "The user greets."
    assert isinstance(finish, Finish) and finish.reason == "eos"


def test_think_tag_text_is_not_a_tag_when_the_tokenizer_has_ids(think_dir):
    """Split on ids: `<think>` spelled with ordinary tokens (here: between other text) is no tag."""
    tok = Tokenizer(think_dir)
    ids = tok.encode("<") + tok.encode("think>x")
    assert tok.token_to_id("<think>") not in ids
    model = Scripted(think_dir, ids, eos=tok.token_to_id(EOS))
    out = list(generate(Session(model), tok, tok.encode("<|im_start|>assistant\n"), SamplingOptions()))
    assert "".join(t.text for t in out[:-1]) == "<think>x" and out[-1].reasoning == ""


def test_prompt_that_opens_the_block(think_dir):
    tokens, finish, _ = events(think_dir, "Counting.</think>Two.", prompt_text="<|im_start|>assistant\n<think>")
    assert "".join(t.text for t in tokens) == "Two." and finish.reasoning == "Counting."


def test_max_thinking_tokens_closes_the_block(think_dir):
    tok = Tokenizer(think_dir)
    script_text = "<think>" + "long thought " * 20
    tokens, finish, _ = events(think_dir, script_text, max_thinking_tokens=5)
    close = tok.token_to_id("</think>")
    ids = [t.id for t in tokens]
    assert ids[5] == close and ids.count(close) == 1  # 5 thinking tokens (the open tag's included)
    assert finish.reasoning and "".join(t.text for t in tokens)  # the answer came after it


def test_zero_thinking_budget_with_a_prompt_that_opened_the_block(think_dir):
    tok = Tokenizer(think_dir)
    tokens, finish, _ = events(think_dir, "thinking hard", prompt_text="<|im_start|>assistant\n<think>",
                               max_thinking_tokens=0)
    assert tokens[0].id == tok.token_to_id("</think>") and finish.reasoning == ""


def test_confidence_is_measured_on_the_answer_tokens(think_dir):
    """Reasoning tokens at p=0.2, answer tokens at p=0.95: confidence reads only the answer, so a
    reasoning model that explores is not handed off for it."""
    tok = Tokenizer(think_dir)
    text = "<think>hmm, let me see</think>Paris."
    n_think = len(tok.encode("<think>hmm, let me see</think>"))
    conf = [0.2] * n_think + [0.95] * 20
    tokens, finish, _ = events(think_dir, text, confidences=conf, confidence_threshold=0.7)
    answer = [t.probability for t in tokens[n_think:]]  # "Paris." and the eos
    assert finish.confidence == pytest.approx(np.mean(answer[:16]), abs=1e-6)
    assert finish.confidence > 0.9 and not finish.cloud_handoff and finish.reason == "eos"
    assert all(t.probability < 0.3 for t in tokens[:n_think])


# ----------------------------------------------------------------------------- the API

@pytest.fixture
def think_model(think_dir):
    def make(text):
        tok = Tokenizer(think_dir)
        return Model(think_dir, engine=Scripted(think_dir, tok.encode(text), eos=tok.token_to_id(EOS)))
    return make


def test_completion_has_thinking_and_the_callback_gets_the_answer(think_model):
    m = think_model("<think>Plan.</think>Answer.")
    got = []
    r = json.loads(cactus_complete(m, [{"role": "user", "content": "hi"}],
                                   callback=lambda b, i, u: got.append(b.decode())))
    assert r["success"] and r["response"] == "Answer." and r["thinking"] == "Plan." and r["finish_reason"] == "eos"
    assert "".join(got) == "Answer."


def test_stream_thinking_option_sends_the_reasoning_to_the_callback(think_model):
    m = think_model("<think>Plan.</think>Answer.")
    got = []
    r = m.complete([{"role": "user", "content": "hi"}], callback=lambda b, i, u: got.append(b.decode()),
                   stream_thinking=True)
    assert "".join(got) == "<think>Plan.</think>Answer." and r.thinking == "Plan." and r.response == "Answer."


def test_enable_thinking_reaches_the_template(think_dir, think_model):
    m = think_model("x")
    m.template = type(m.template)("{{ 'on' if enable_thinking else 'off' }}{% if enable_thinking is not defined %}"
                                  "-unset{% endif %}")
    msgs = [{"role": "user", "content": "hi"}]
    decode = m.tokenizer.decode
    assert decode(m.prompt_ids(msgs)) == "off-unset"
    assert decode(m.prompt_ids(msgs, enable_thinking=True)) == "on"
    assert decode(m.prompt_ids(msgs, enable_thinking=False)) == "off"


@pytest.mark.parametrize("options, field", [({"max_thinking_tokens": -1}, "max_thinking_tokens"),
                                            ({"enable_thinking": "yes"}, "enable_thinking"),
                                            ({"stream_thinking": 1}, "stream_thinking")])
def test_bad_thinking_options_name_the_field(think_model, options, field):
    r = json.loads(cactus_complete(think_model("x"), [{"role": "user", "content": "hi"}], options=options))
    assert not r["success"] and field in r["error"] and r["thinking"] == ""


def test_token_events_carry_reasoning_separately(think_model):
    m = think_model("<think>a b</think>c")
    evs = list(m.stream([{"role": "user", "content": "hi"}]))
    tokens = [e for e in evs if isinstance(e, Token)]
    assert "".join(t.reasoning for t in tokens) == "a b" and "".join(t.text for t in tokens) == "c"


# ----------------------------------------------------------------------------- the server

@pytest.fixture
def served(think_model, start):
    """`cactus serve` on loopback over a scripted reasoning model -> an openai client."""
    return lambda text: start(think_model(text))[0]


USER = [{"role": "user", "content": "hi"}]


def test_server_chat_reasoning_content(served):
    client = served(f"<think>Weather needs a tool.</think>{S}[get_weather(city='Oslo')]{E}")
    r = client.chat.completions.create(model="think", messages=USER, tools=TOOLS)
    msg = r.choices[0].message
    assert msg.reasoning_content == "Weather needs a tool." and msg.content is None
    assert [tc.function.name for tc in msg.tool_calls] == ["get_weather"] and r.choices[0].finish_reason == "tool_calls"
    chunks = list(client.chat.completions.create(model="think", messages=USER, tools=TOOLS, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "Weather needs a tool."
    assert "".join(d.content or "" for d in deltas) == ""


def test_server_reasoning_in_history_reaches_the_template(served):
    client = served("ok")
    history = USER + [{"role": "assistant", "content": "A.", "reasoning_content": "earlier thought"},
                      {"role": "user", "content": "again"}]
    r = client.chat.completions.create(model="think", messages=history, max_tokens=4)
    assert r.choices[0].message.content == "ok"


def test_server_responses_reasoning_item(served):
    client = served("<think>Two words.</think>Hello there.")
    r = client.responses.create(model="think", input="hi")
    kinds = [item.type for item in r.output]
    assert kinds == ["reasoning", "message"] and r.output_text == "Hello there."
    assert r.output[0].content[0].text == "Two words."
    events = list(client.responses.create(model="think", input="hi", stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert deltas == "Two words." and events[-1].response.output_text == "Hello there."


def test_server_thinking_fields(served):
    client = served("<think>" + "a " * 30 + "</think>done")
    r = client.chat.completions.create(model="think", messages=USER, extra_body={"max_thinking_tokens": 3})
    assert r.choices[0].message.content and len(r.choices[0].message.reasoning_content.split()) <= 2
    from openai import BadRequestError

    with pytest.raises(BadRequestError, match="chat_template_kwargs"):
        client.chat.completions.create(model="think", messages=USER, extra_body={"chat_template_kwargs": {"foo": 1}})


# ----------------------------------------------------------------------------- cactus run

def test_cactus_run_keeps_the_thinking_out_of_the_answers(think_model):
    import io

    from cactus.repl import repl

    def run(lines):
        out, err = io.StringIO(), io.StringIO()
        rc = repl(think_model("<think>Greeting back.</think>Hello!"), io.StringIO(lines), out, err)
        return rc, out.getvalue(), err.getvalue()

    rc, out, err = run("hi\n")
    assert rc == 0 and out == "Hello!\n" and "Greeting back" not in err and "/think shows it" in err
    rc, out, err = run("/think\nhi\n")
    assert rc == 0 and out == "Hello!\n" and "Greeting back.\n" in err and "[thinking shown]" in err
