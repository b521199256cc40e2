"""LFM2.5 end to end: the published shapes, rope theta nested under `rope_parameters`, a tiny
128,000-token checkpoint converted and held to transformers, and the chat layer on the real LFM2.5
templates (tests/fixtures/README.md says where each comes from), rendered beside transformers."""

from __future__ import annotations

import copy
import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from chat_helpers import SPECIAL_TOKENS, tokenizer_json
from helpers import hf_logits, make_hf_model

from cactus import shapes
from cactus.chat import ChatTemplate, validate_messages
from cactus.config import ConfigError, ModelConfig
from cactus.convert import convert
from cactus.engine import load

FIXTURES = Path(__file__).parent / "fixtures"
TEMPLATES = {name: (FIXTURES / f"lfm2.5-{name}.jinja").read_text("utf-8")
             for name in ("1.2b-instruct", "2.6b", "8b-a1b")}
LFM2_TEMPLATE = (Path(__file__).parent.parent / "tools" / "lfm2_chat_template.jinja").read_text("utf-8")

VOCAB = 128000
# LFM2.5's 128K vocabulary moved every special id: pad 124893 and <|im_end|> 124900 are published,
# <think>/</think> 124901/124902 in the 2.6B; the rest keep LFM2's order (our assumption).
SPECIAL_IDS = {tok: 124893 + i for i, tok in enumerate(SPECIAL_TOKENS[:8])}
SPECIAL_IDS.update({"<think>": 124901, "</think>": 124902})
SPECIAL_IDS.update({tok: 124903 + i for i, tok in enumerate(SPECIAL_TOKENS[8:])})
ROPE = {"rope_type": "default", "rope_theta": 5e6}
TINY = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            rope_parameters=ROPE, pad_token_id=124893, bos_token_id=124894, eos_token_id=124900)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("name, vocab, theta, attn", [
    ("lfm2.5-1.2b", 65536, 1e6, (2, 5, 8, 10, 12, 14)),
    ("lfm2.5-2.6b", VOCAB, 1e7, (2, 5, 9, 13, 17, 21, 24, 27)),
    ("lfm2.5-8b-a1b", VOCAB, 5e6, (2, 6, 10, 14, 18, 21)),
])
def test_lfm25_shapes_parse(name, vocab, theta, attn):
    cfg = ModelConfig.from_dict(shapes.config(name), name)
    assert (cfg.vocab_size, cfg.rope_theta, cfg.attention_layers) == (vocab, theta, attn)
    if vocab == VOCAB:
        assert "rope_theta" not in shapes.config(name) and shapes.config(name)["rope_parameters"]["rope_theta"] == theta


@pytest.mark.parametrize("name", ["lfm2.5-1.2b", "lfm2.5-2.6b", "lfm2.5-8b-a1b", "lfm2-2.6b"])
def test_shape_has_the_parameters_transformers_builds(name):
    """Our tensor list for a shape against transformers' model of the same config.json (on the meta
    device): same parameter count, and the rope theta transformers reads is ours."""
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM, Lfm2MoeConfig, Lfm2MoeForCausalLM

    from cactus.synthetic import logical_tensors

    d = shapes.config(name)
    moe = d["model_type"] == "lfm2_moe"
    hf_cfg = (Lfm2MoeConfig if moe else Lfm2Config)(**copy.deepcopy(d))
    with torch.device("meta"):
        model = (Lfm2MoeForCausalLM if moe else Lfm2ForCausalLM)(hf_cfg)
    saved = model.state_dict()  # persistent buffers (the expert bias) are weights too
    theirs = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if n in saved)
    ours = ModelConfig.from_dict(d, name)
    assert sum(int(np.prod(s)) for s in logical_tensors(ours).values()) == theirs
    assert hf_cfg.rope_parameters["rope_theta"] == ours.rope_theta


def test_bench_synthetic_knows_the_lfm25_shapes(capsys):
    from cactus.bench import main

    with pytest.raises(SystemExit):
        main(["--synthetic", "lfm2.5-3b"])
    err = capsys.readouterr().err
    assert all(n in err for n in ("lfm2.5-1.2b", "lfm2.5-2.6b", "lfm2.5-8b-a1b"))


# ----------------------------------------------------------------------------- rope theta

ROPE_CASES = [
    ("nested", {"rope_parameters": {"rope_type": "default", "rope_theta": 5e6}}),
    ("nested without type", {"rope_parameters": {"rope_theta": 5e6}}),
    ("top level", {"rope_theta": 2e6}),
    ("nested without theta falls back to top level", {"rope_parameters": {"rope_type": "default"},
                                                      "rope_theta": 3e6}),
    ("nested wins over top level", {"rope_parameters": {"rope_type": "default", "rope_theta": 5e6},
                                    "rope_theta": 7e6}),
    ("rope_scaling wins over rope_parameters", {"rope_scaling": {"rope_type": "default", "rope_theta": 4e6},
                                                "rope_parameters": {"rope_type": "default", "rope_theta": 9e6}}),
    ("none", {}),
]


@pytest.mark.parametrize("kind", ["dense", "moe"])
@pytest.mark.parametrize("fields", [c[1] for c in ROPE_CASES], ids=[c[0] for c in ROPE_CASES])
def test_rope_theta_read_where_transformers_reads_it(tmp_path, kind, fields):
    from transformers import Lfm2Config, Lfm2MoeConfig

    d = shapes.config("lfm2.5-8b-a1b" if kind == "moe" else "lfm2.5-1.2b")
    d.pop("rope_theta", None)
    d.pop("rope_parameters", None)
    d.update(copy.deepcopy(fields))
    (tmp_path / "config.json").write_text(json.dumps(d))
    theirs = (Lfm2MoeConfig if kind == "moe" else Lfm2Config).from_pretrained(tmp_path).rope_parameters["rope_theta"]
    assert ModelConfig.load(tmp_path).rope_theta == theirs


@pytest.mark.parametrize("rope, error", [
    ({"rope_type": "default", "rope_theta": "5e6"},
     "config.json: rope_parameters.rope_theta must be a number, got '5e6'"),
    ({"rope_type": "default", "rope_theta": 0}, "config.json: rope_parameters.rope_theta must be > 0, got 0"),
    ({"rope_type": "yarn", "rope_theta": 5e6}, "config.json: rope_parameters.rope_type 'yarn' is not supported"),
    ({"full_attention": {"rope_type": "default", "rope_theta": 5e6}},
     "config.json: rope_parameters given per layer type (full_attention) is not supported"),
    ("5e6", "config.json: rope_parameters must be an object, got '5e6'"),
])
def test_bad_rope_parameters_name_the_file_and_field(tmp_path, rope, error):
    d = dict(shapes.config("lfm2.5-8b-a1b"), rope_parameters=rope)
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError) as e:
        ModelConfig.load(tmp_path)
    assert str(e.value).startswith(str(tmp_path / error))


# ----------------------------------------------------------------------------- a tiny LFM2.5 checkpoint

@pytest.fixture(scope="module", params=["dense", "moe"])
def lfm25(request, tmp_path_factory):
    """A tiny LFM2.5-style checkpoint (128K vocabulary, nested rope theta 5e6) -> (hf dir, torch model, ids)."""
    path, model = make_hf_model(tmp_path_factory.mktemp("lfm25") / "hf", request.param, **TINY)
    ids = np.random.default_rng(3).integers(0, VOCAB, 32)
    ids[:4] = [124894, 124899, 127999, 65536]  # rows past LFM2's 65,536
    return path, model, ids


def rel_err(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_checkpoint_stores_rope_nested(lfm25):
    saved = json.loads((lfm25[0] / "config.json").read_text())
    assert saved["rope_parameters"]["rope_theta"] == 5e6 and "rope_theta" not in saved
    assert saved["vocab_size"] == VOCAB


def test_converted_lfm25_matches_transformers(lfm25, tmp_path):
    hf_dir, model, ids = lfm25
    out = convert(hf_dir, tmp_path / "f32", quant="f32", chat=False)
    m = load(out)
    assert (m.config.rope_theta, m.config.vocab_size, m.config.eos_token_id) == (5e6, VOCAB, (124900,))
    expected = hf_logits(model, ids)
    assert expected.shape == (len(ids), VOCAB)
    assert rel_err(m.forward(ids), expected) < 1e-4
    m.reset()  # cached decode: prefill then one token at a time
    steps = [m.forward(ids[:20])] + [m.forward(ids[i:i + 1]) for i in range(20, len(ids))]
    assert rel_err(np.concatenate(steps), expected) < 1e-4


def test_the_theta_shows_in_the_logits(lfm25):
    """The parity above can fail on a wrong theta: 1e6 instead of 5e6 moves these logits far."""
    import torch
    from transformers import AutoModelForCausalLM

    hf_dir, model, ids = lfm25
    other = AutoModelForCausalLM.from_pretrained(hf_dir, rope_parameters={"rope_type": "default",
                                                                         "rope_theta": 1e6},
                                                 dtype=torch.float32).eval()
    assert other.config.rope_parameters["rope_theta"] == 1e6
    assert rel_err(hf_logits(other, ids), hf_logits(model, ids)) > 1e-2


def test_int4_lfm25_kernels_follow_the_reference(lfm25, tmp_path):
    from cactus import ops

    hf_dir, _, ids = lfm25
    out = convert(hf_dir, tmp_path / "int4", quant="int4", chat=False)
    with ops.use("ref"):
        ref = load(out).forward(ids)
    ours = load(out).forward(ids)
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.7


# ----------------------------------------------------------------------------- a 128K tokenizer

def lfm25_tokenizer_json() -> str:
    """chat_helpers' byte-level BPE re-laid as a 128,000-token vocabulary with LFM2.5's special ids
    (fillers `<|reserved_N|>` in between, which no merge produces)."""
    tok = json.loads(tokenizer_json())
    specials = set(SPECIAL_TOKENS)
    words = [t for t, _ in sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1]) if t not in specials]
    vocab = {t: i for i, t in enumerate(words)}
    by_id = {i: t for t, i in SPECIAL_IDS.items()}
    for i in range(len(words), VOCAB):
        vocab[by_id.get(i, f"<|reserved_{i}|>")] = i
    tok["model"]["vocab"] = vocab
    template = tok["added_tokens"][0]
    tok["added_tokens"] = [dict(template, id=i, content=t, special=True) for t, i in sorted(SPECIAL_IDS.items(),
                                                                                           key=lambda kv: kv[1])]
    return json.dumps(tok, ensure_ascii=False)


def write_lfm25_tokenizer(d: Path, template: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokenizer.json").write_text(lfm25_tokenizer_json(), "utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|startoftext|>", "eos_token": "<|im_end|>",
        "pad_token": "<|pad|>", "model_max_length": 128000, "clean_up_tokenization_spaces": False}), "utf-8")
    (d / "chat_template.jinja").write_text(template, "utf-8")
    return d


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    d = write_lfm25_tokenizer(tmp_path_factory.mktemp("tok25"), TEMPLATES["2.6b"])
    tok = AutoTokenizer.from_pretrained(d)
    assert [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<think>", "</think>")] == [124900, 124901, 124902]
    return tok


def test_lfm25_chat_model_end_to_end(tmp_path, hf_tokenizer):
    """Converted with its tokenizer and the 2.6B's template: the prompt ids are transformers', the
    always-open `<think>` is the prompt's last id, and the answer stops on `<|im_end|>` = 124900."""
    from cactus.api import Model

    hf_dir, _ = make_hf_model(tmp_path / "hf", "dense", **TINY)
    write_lfm25_tokenizer(hf_dir, TEMPLATES["2.6b"])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]
    with Model(convert(hf_dir, tmp_path / "out", quant="int8")) as m:
        ids = m.prompt_ids(messages, tools=[WEATHER])
        assert ids == list(hf_tokenizer.apply_chat_template(messages, tools=[WEATHER], add_generation_prompt=True,
                                                            tokenize=True, return_dict=False))
        assert ids[-1] == 124901 and m.tokenizer.decode(ids).endswith("<|im_start|>assistant\n<think>")
        assert 124900 in m.stop_ids and 7 not in m.stop_ids
        done = m.complete(messages, max_tokens=4, temperature=0.0)
    assert done.decode_tokens >= 1 and done.finish_reason in ("eos", "length")


# ----------------------------------------------------------------------------- the chat templates

def render_both(hf_tokenizer, name, ours_messages, hf_messages=None, tools=None, **kwargs):
    """Our rendering and transformers' of one conversation through one LFM2.5 template."""
    template = ChatTemplate(TEMPLATES[name], {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>",
                                              "pad_token": "<|pad|>"})
    ours = template.render(ours_messages, tools=tools, **kwargs)
    kwargs.setdefault("add_generation_prompt", True)
    theirs = hf_tokenizer.apply_chat_template(hf_messages or ours_messages, tools=tools, tokenize=False,
                                              chat_template=TEMPLATES[name], **kwargs)
    return ours, theirs


def call(name, **arguments):
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}


HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "It is sunny.", "thinking": "The user wants weather."},
    {"role": "user", "content": "And Rome?"},
    {"role": "assistant", "thinking": "Call the tool.", "tool_calls": [call("get_weather", city="Rome")]},
    {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 24}"},
]
CONVERSATIONS = [
    ("user", [{"role": "user", "content": "Hello"}], None),
    ("system", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], None),
    ("tools", [{"role": "user", "content": "Weather in Paris?"}], [WEATHER]),
    ("system and tools", [{"role": "system", "content": "S"}, {"role": "user", "content": "x"}], [WEATHER]),
    ("thinking in content", [{"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "<think>greet</think>Hello!"},
                             {"role": "user", "content": "Bye"}], None),
    ("history with reasoning and a tool call", HISTORY, [WEATHER]),
]


@pytest.mark.parametrize("name", ["2.6b", "8b-a1b"])
@pytest.mark.parametrize("messages, tools", [c[1:] for c in CONVERSATIONS], ids=[c[0] for c in CONVERSATIONS])
def test_render_matches_transformers(hf_tokenizer, name, messages, tools):
    ours, theirs = render_both(hf_tokenizer, name, messages, tools=tools)
    assert ours == theirs


@pytest.mark.parametrize("messages, tools", [c[1:] for c in CONVERSATIONS[:5]], ids=[c[0] for c in CONVERSATIONS[:5]])
def test_render_matches_transformers_1_2b(hf_tokenizer, messages, tools):
    ours, theirs = render_both(hf_tokenizer, "1.2b-instruct", messages, tools=tools)
    assert ours == theirs


def test_2_6b_generation_prompt_opens_the_think_block(hf_tokenizer):
    ours, _ = render_both(hf_tokenizer, "2.6b", [{"role": "user", "content": "Hi"}])
    assert ours == "<|startoftext|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>"
    ours, _ = render_both(hf_tokenizer, "8b-a1b", [{"role": "user", "content": "Hi"}])
    assert ours.endswith("<|im_start|>assistant\n")  # the 8B-A1B writes its own <think>


@pytest.mark.parametrize("name", ["1.2b-instruct", "2.6b"])
def test_tools_listed_without_markers(hf_tokenizer, name):
    ours, _ = render_both(hf_tokenizer, name, [{"role": "user", "content": "x"}], tools=[WEATHER])
    assert f"<|im_start|>system\nList of tools: [{json.dumps(WEATHER, ensure_ascii=False)}]<|im_end|>" in ours
    assert "<|tool_list_start|>" not in ours and "<|tool_list_end|>" not in ours


def test_8b_lists_tools_under_todays_date(hf_tokenizer):
    """The template calls strftime_now: today's date as transformers renders it (either side of midnight)."""
    before = date.today().isoformat()
    ours, theirs = render_both(hf_tokenizer, "8b-a1b", [{"role": "user", "content": "x"}], tools=[WEATHER])
    days = {before, date.today().isoformat()}
    assert any(f"<|im_start|>system\nToday's date: {d}\n\nList of tools: [{json.dumps(WEATHER)}]<|im_end|>" in ours
               for d in days)
    assert ours == theirs or len(days) == 2


def test_tool_calls_written_as_the_model_writes_them(hf_tokenizer):
    """OpenAI sends arguments as a JSON string; the LFM2.5 templates iterate a mapping: we parse them."""
    openai = [{"role": "user", "content": "Weather?"},
              {"role": "assistant", "content": None, "tool_calls": [
                  {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                                "arguments": "{\"city\": \"Rome\"}"}}]},
              {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    for name in ("2.6b", "8b-a1b"):
        ours, theirs = render_both(hf_tokenizer, name, openai, hf_messages=[
            openai[0], {"role": "assistant", "tool_calls": [call("get_weather", city="Rome")]}, openai[2]])
        assert ours == theirs
        assert "<|im_start|>assistant\n<|tool_call_start|>[get_weather(city='Rome')]<|tool_call_end|><|im_end|>" in ours


@pytest.mark.parametrize("key", ["thinking", "reasoning_content"])
@pytest.mark.parametrize("name", ["2.6b", "8b-a1b"])
def test_reasoning_kept_after_the_last_user_turn_and_stripped_before(hf_tokenizer, name, key):
    """Either spelling reaches the template, which renders it only in the turn still being answered."""
    messages = [dict(m) for m in HISTORY]
    for m in messages:
        if "thinking" in m:
            m[key] = m.pop("thinking")
    ours, theirs = render_both(hf_tokenizer, name, messages, hf_messages=HISTORY, tools=[WEATHER])
    assert ours == theirs
    assert "The user wants weather." not in ours
    assert "<|im_start|>assistant\n<think>Call the tool.</think><|tool_call_start|>[get_weather(city='Rome')]" in ours


@pytest.mark.parametrize("name", ["2.6b", "8b-a1b"])
def test_preserve_thinking_keeps_every_turns_reasoning(hf_tokenizer, name):
    ours, theirs = render_both(hf_tokenizer, name, HISTORY, tools=[WEATHER], preserve_thinking=True)
    assert ours == theirs
    assert "<|im_start|>assistant\n<think>The user wants weather.</think>It is sunny.<|im_end|>" in ours


def test_1_2b_reasoning_field_becomes_think_tags_it_strips_from_past_turns(hf_tokenizer):
    """The 1.2B template reads no reasoning field; it keeps `<think>` in the content of the last
    assistant turn only: the field is written there as the model wrote it."""
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!", "reasoning_content": "greet"},
                {"role": "user", "content": "Name?"},
                {"role": "assistant", "content": "Liquid.", "thinking": "a name"}]
    inline = [messages[0], {"role": "assistant", "content": "<think>greet</think>Hello!"}, messages[2],
              {"role": "assistant", "content": "<think>a name</think>Liquid."}]
    ours, theirs = render_both(hf_tokenizer, "1.2b-instruct", messages, hf_messages=inline,
                               add_generation_prompt=False)
    assert ours == theirs
    assert "<|im_start|>assistant\nHello!<|im_end|>" in ours
    assert "<|im_start|>assistant\n<think>a name</think>Liquid.<|im_end|>" in ours
    kept, _ = render_both(hf_tokenizer, "1.2b-instruct", messages, hf_messages=inline,
                          add_generation_prompt=False, keep_past_thinking=True)
    assert "<|im_start|>assistant\n<think>greet</think>Hello!<|im_end|>" in kept


def test_a_template_that_never_reasons_gets_no_reasoning():
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!", "thinking": "greet"}]
    text = ChatTemplate(LFM2_TEMPLATE, {"bos_token": "<|startoftext|>"}).render(messages, add_generation_prompt=False)
    assert text == "<|startoftext|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"


def test_both_spellings_reach_the_template_under_both_names():
    for key in ("thinking", "reasoning_content"):
        m = validate_messages([{"role": "assistant", "content": "a", key: "r"}])[0]
        assert (m["thinking"], m["reasoning_content"]) == ("r", "r")
    source = "{{ messages[0].thinking }}|{{ messages[0].reasoning_content }}"
    assert ChatTemplate(source).render([{"role": "assistant", "content": "a", "thinking": "r"}]) == "r|r"
