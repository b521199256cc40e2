"""Bad input is refused up front, in one line naming the flag, file or field: CLI flags at parse
time (exit 2, before any model loads), the files of a model directory when it is opened, API
arguments, and text that is not valid Unicode (piped bytes, lone surrogates) on its own line or
request while the chat goes on. Built on a copy of the demo model (its weights linked, not copied)."""

from __future__ import annotations

import http.client
import io
import json
import re
import shutil
import sys
import threading
from pathlib import Path

import pytest

from cactus.api import Model, cactus_complete, cactus_destroy, cactus_init
from cactus.cli import main
from cactus.config import ConfigError, ModelConfig
from cactus.demo import demo_path
from cactus.server import Server

HELLO = [{"role": "user", "content": "Hello"}]


def model_copy(dest: Path, **files) -> Path:
    """The demo model in `dest` (weights symlinked), with `files` {name: text or JSON value} replaced
    (None: removed)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in demo_path().iterdir():
        if f.name.endswith(".safetensors"):
            (dest / f.name).symlink_to(f)
        else:
            shutil.copy(f, dest / f.name)
    for name, value in files.items():
        name = name.replace("__", ".")  # config__json -> config.json
        if value is None:
            (dest / name).unlink()
            continue
        text = value if isinstance(value, (str, bytes)) else json.dumps(value)
        (dest / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return dest


def demo_json(name: str, **changes) -> dict:
    d = json.loads((demo_path() / name).read_text())
    d.update(changes)
    return {k: v for k, v in d.items() if v is not ...}  # `...` removes a key


def run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------- CLI flags

@pytest.mark.parametrize("argv,line", [
    (["run", "--temperature", "-1"], "argument --temperature: must be in [0, inf), got -1.0"),
    (["run", "--temperature", "nan"], "argument --temperature: must be a number, got nan"),
    (["run", "--temperature", "hot"], "argument --temperature: must be a number, got 'hot'"),
    (["run", "--top-p", "2"], "argument --top-p: must be in (0, 1], got 2.0"),
    (["run", "--top-p", "0"], "argument --top-p: must be in (0, 1], got 0.0"),
    (["run", "--top-k", "-1"], "argument --top-k: must be in [0, inf), got -1"),
    (["run", "--top-k", "1.5"], "argument --top-k: must be an integer, got '1.5'"),
    (["run", "--max-tokens", "0"], "argument --max-tokens: must be in [1, inf), got 0"),
    (["run", "--repetition-penalty", "0"], "argument --repetition-penalty: must be in (0, inf), got 0.0"),
    (["run", "--seed", "-2"], "argument --seed: must be in [0, 9223372036854775807], got -2"),
    (["run", "--context", "-3"], "argument --context: must be > 0 tokens, got -3"),
    (["run", "--context", "0"], "argument --context: must be > 0 tokens, got 0"),
    (["run", "--context", "abc"], "argument --context: must be a whole number of tokens, got 'abc'"),
    (["serve", "--context", "-3"], "argument --context: must be > 0 tokens, got -3"),
    (["serve", "--port", "99999"], "argument --port: must be a port number in 0..65535, got '99999'"),
])
def test_bad_flags_are_usage_errors_before_the_model_loads(capsys, tmp_path, argv, line):
    # the model path does not exist: the flag is refused first, so nothing is loaded or downloaded
    rc, out, err = run_cli(capsys, *argv, str(tmp_path / "no-model"))
    assert rc == 2
    assert err.strip().splitlines()[-1] == f"cactus {argv[0]}: error: {line}"
    assert "no such model" not in err and "Traceback" not in err


def test_help_still_exits_0(capsys):
    rc, out, _ = run_cli(capsys, "run", "--help")
    assert rc == 0 and "--temperature" in out


@pytest.mark.parametrize("content,line", [
    ("[{]", "not valid JSON"),
    ('{"type": "function"}', "tools must be a list of tool schemas"),
    ('[{"type": "function", "function": {"name": "no spaces"}}]', "tools[0].function.name must be an identifier"),
])
def test_bad_tools_file_is_refused_before_the_model_loads(capsys, tmp_path, content, line):
    (tmp_path / "tools.json").write_text(content)
    rc, _, err = run_cli(capsys, "run", str(tmp_path / "no-model"), "--tools", str(tmp_path / "tools.json"))
    assert rc == 2
    assert err.startswith(f"cactus run: error: --tools {tmp_path / 'tools.json'}: ") and line in err
    assert len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- API arguments

@pytest.mark.parametrize("value,message", [
    (-5, "context_size must be > 0 tokens, got -5"),
    (0, "context_size must be > 0 tokens, got 0"),
    ("abc", "context_size must be a whole number of tokens (or None), got 'abc'"),
    (2.5, "context_size must be a whole number of tokens (or None), got 2.5"),
    (True, "context_size must be a whole number of tokens (or None), got True"),
])
def test_cactus_init_refuses_a_bad_context_size(value, message):
    with pytest.raises(ValueError) as e:
        cactus_init(demo_path(), context_size=value)
    assert str(e.value) == message


def test_cactus_init_takes_a_good_context_size():
    h = cactus_init(demo_path(), context_size=64)
    try:
        assert h.engine.max_context == 64
    finally:
        cactus_destroy(h)


# ----------------------------------------------------------------------------- files of the model

GEN = "generation_config.json"


@pytest.mark.parametrize("files,where,problem", [
    ({"generation_config__json": demo_json(GEN, do_sample=True, temperature=-1)},
     GEN, "temperature must be in [0, inf), got -1"),
    ({"generation_config__json": demo_json(GEN, do_sample=True, top_p=2)}, GEN, "top_p must be in (0, 1], got 2"),
    ({"generation_config__json": demo_json(GEN, repetition_penalty="high")},
     GEN, "repetition_penalty must be a number, got 'high'"),
    ({"generation_config__json": demo_json(GEN, do_sample="yes")}, GEN, "do_sample must be true or false"),
    ({"generation_config__json": demo_json(GEN, eos_token_id=[7, "x"])},
     GEN, "eos_token_id must be an integer or a list of integers"),
    ({"generation_config__json": "{oops"}, GEN, "not valid JSON"),
    ({"generation_config__json": "[1, 2]"}, GEN, "expected a JSON object, got list"),
    ({"config__json": demo_json("config.json", num_attention_heads=0)},
     "config.json", "num_attention_heads must be > 0, got 0"),
    ({"config__json": demo_json("config.json", max_position_embeddings=0)},
     "config.json", "max_position_embeddings must be > 0, got 0"),
    ({"config__json": demo_json("config.json", vocab_size=[8192])},
     "config.json", "vocab_size must be an integer, got [8192]"),
    ({"config__json": demo_json("config.json", layer_types="conv")},
     "config.json", "layer_types must be a list of strings, got 'conv'"),
    ({"config__json": demo_json("config.json", rope_parameters=[1])},
     "config.json", "rope_parameters must be an object, got [1]"),
    ({"config__json": "[]"}, "config.json", "expected a JSON object, got list"),
    ({"tokenizer_config__json": "{oops"}, "tokenizer_config.json", "not valid JSON"),
    ({"tokenizer_config__json": "[]"}, "tokenizer_config.json", "expected a JSON object, got list"),
    ({"tokenizer_config__json": demo_json("tokenizer_config.json", eos_token=["<|im_end|>"])},
     "tokenizer_config.json", "eos_token must be a string or {\"content\": string}, got ['<|im_end|>']"),
    ({"tokenizer_config__json": demo_json("tokenizer_config.json", chat_template=[{"template": "x"}]),
      "chat_template__jinja": None},
     "tokenizer_config.json", "chat_template must be a string or a list of {name, template} objects"),
    ({"chat_template__jinja": "{% for m in messages %}{{ m.content }"},
     "chat_template.jinja", "chat template does not parse"),
    ({"chat_template__jinja": "{{ raise_exception('this template needs a system message') }}"},
     "chat_template.jinja", "rendering a one-message conversation fails "
                            "(chat template: this template needs a system message)"),
    ({"chat_template__jinja": "{{ messages[0].content + 1 }}"},
     "chat_template.jinja", "rendering a one-message conversation fails (chat template: TypeError"),
    ({"chat_template__jinja": b"{{ '\xff' }}"}, "chat_template.jinja", "not valid UTF-8 at byte 4"),
])
def test_bad_model_files_fail_when_the_model_is_opened(capsys, tmp_path, files, where, problem):
    path = model_copy(tmp_path / "m", **files)
    with pytest.raises(ValueError) as e:
        Model(path)
    assert str(e.value).startswith(f"{path / where}: ") and problem in str(e.value), str(e.value)
    # the CLI: the same one line, exit 2, before the first turn is read
    rc, out, err = run_cli(capsys, "run", str(path))
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [f"cactus run: error: {e.value}"]


def test_sampling_defaults_apply_only_with_do_sample(tmp_path):
    unused = model_copy(tmp_path / "a", generation_config__json=demo_json(GEN, temperature=0.7, top_p=0.9))
    assert Model(unused).defaults == {}
    used = model_copy(tmp_path / "b", generation_config__json=demo_json(GEN, do_sample=True, temperature=0.7,
                                                                        top_k=None, repetition_penalty=1.05))
    assert Model(used).defaults == {"temperature": 0.7, "repetition_penalty": 1.05}


BASE = dict(model_type="lfm2", vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=128, layer_types=["conv", "full_attention"])


@pytest.mark.parametrize("changes,message", [
    ({"num_attention_heads": 0}, "num_attention_heads must be > 0, got 0"),
    ({"num_key_value_heads": 0}, "num_key_value_heads must be > 0, got 0"),
    ({"hidden_size": 0}, "hidden_size must be > 0, got 0"),
    ({"vocab_size": -1}, "vocab_size must be > 0, got -1"),
    ({"max_position_embeddings": 0}, "max_position_embeddings must be > 0, got 0"),
    ({"num_hidden_layers": "2"}, "num_hidden_layers must be an integer, got '2'"),
    ({"hidden_size": 64.5}, "hidden_size must be an integer, got 64.5"),
    ({"hidden_size": True}, "hidden_size must be an integer, got True"),
    ({"layer_types": [1, 2]}, "layer_types must be a list of strings, got [1, 2]"),
    ({"layer_types": None, "full_attn_idxs": {"a": 1}}, "full_attn_idxs must be a list of integers"),
    ({"layer_types": None, "full_attn_idxs": [0, "1"]}, "full_attn_idxs[1] must be an integer, got '1'"),
    ({"eos_token_id": [2, "x"]}, "eos_token_id[1] must be an integer, got 'x'"),
    ({"eos_token_id": "2"}, "eos_token_id must be an integer, got '2'"),
    ({"bos_token_id": -1}, "bos_token_id must be >= 0, got -1"),
    ({"norm_eps": 0}, "norm_eps must be > 0, got 0"),
    ({"norm_eps": "small"}, "norm_eps must be a number, got 'small'"),
    ({"rope_theta": float("inf")}, "rope_theta must be a number, got inf"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": -1}}, "rope_parameters.rope_theta must be > 0"),
    ({"conv_bias": "no"}, "conv_bias must be true or false, got 'no'"),
    ({"conv_L_cache": 0}, "conv_L_cache must be > 0, got 0"),
    ({"intermediate_size": 1}, "the FFN width works out to 0"),
    ({"block_multiple_of": 0}, "block_multiple_of must be > 0, got 0"),
    ({"head_dim": [16]}, "head_dim must be an integer, got [16]"),
    ({"model_type": "lfm2_moe", "num_experts": 4, "num_experts_per_tok": 0, "moe_intermediate_size": 8},
     "num_experts_per_tok must be > 0, got 0"),
    ({"model_type": "lfm2_moe", "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
      "num_dense_layers": 3}, "num_dense_layers 3 is more than num_hidden_layers (2)"),
])
def test_config_fields_are_checked_naming_the_field(changes, message):
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict({**BASE, **changes}, "x/config.json")
    assert str(e.value).startswith(f"x/config.json: {message}"), str(e.value)


def test_config_nulls_and_integral_floats_are_accepted():
    cfg = ModelConfig.from_dict({**BASE, "num_key_value_heads": None, "head_dim": None, "bos_token_id": None,
                                 "max_position_embeddings": 4096.0, "eos_token_id": [2, 7]})
    assert (cfg.num_key_value_heads, cfg.bos_token_id, cfg.max_position_embeddings) == (4, None, 4096)
    assert cfg.eos_token_id == (2, 7)


# ----------------------------------------------------------------------------- text that is not Unicode

def test_piped_run_reports_a_bad_line_and_answers_the_rest(capsys, monkeypatch):
    stdin = io.TextIOWrapper(io.BytesIO(b"Hello\nbad \xff\xfe line\n\xc3(\nHow are you?\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    rc, out, err = run_cli(capsys, "run", str(demo_path()), "--max-tokens", "3")
    assert "error: line 2: not valid UTF-8 at byte 4" in err.splitlines()
    assert "error: line 3: not valid UTF-8 at byte 0" in err.splitlines()
    assert len(re.findall(r"\[[\d.]+ tok/s ·", err)) == 2  # lines 1 and 4 are answered
    assert rc == 1  # a script sees that some turns failed
    assert "Traceback" not in err and "TextInputSequence" not in err


def test_piped_run_with_every_turn_answered_exits_0(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("Héllo\n".encode()), encoding="utf-8"))
    rc, _, err = run_cli(capsys, "run", str(demo_path()), "--max-tokens", "2")
    assert rc == 0 and len(re.findall(r"\[[\d.]+ tok/s ·", err)) == 1


def test_piped_run_with_a_refused_turn_exits_1(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("word " * 200 + "\nHi\n"))
    rc, _, err = run_cli(capsys, "run", str(demo_path()), "--max-tokens", "2", "--context", "64")
    assert rc == 1
    assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1
    assert len(re.findall(r"\[[\d.]+ tok/s ·", err)) == 1  # the second line is still answered


def test_system_prompt_that_is_not_unicode_is_a_usage_error(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "run", str(tmp_path / "no-model"), "--system", "be \udcff brief")
    assert rc == 2
    assert err.strip() == "cactus run: error: --system: not valid Unicode (lone surrogate at character 3)"


@pytest.fixture(scope="module")
def handle():
    h = cactus_init(demo_path())
    yield h
    cactus_destroy(h)


@pytest.mark.parametrize("messages,tools,error", [
    ('[{"role": "user", "content": "hi \\ud800"}]', None,
     "messages[0].content: not valid Unicode (lone surrogate at character 3)"),
    ([{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}], None,
     "messages[0].content[0].text: not valid Unicode (lone surrogate at character 0)"),
    ([{"role": "system", "content": "ok"}, {"role": "user", "content": "x", "name": "a\ud83d"}], None,
     "messages[1].name: not valid Unicode (lone surrogate at character 1)"),
    (HELLO, [{"type": "function", "function": {"name": "f", "description": "d\ud800"}}],
     "tools[0].function.description: not valid Unicode (lone surrogate at character 1)"),
])
def test_lone_surrogates_are_a_clear_error_from_the_api(handle, messages, tools, error):
    r = json.loads(cactus_complete(handle, messages, tools=tools, max_tokens=2))
    assert r["success"] is False and r["error"] == error
    assert json.loads(cactus_complete(handle, HELLO, max_tokens=2))["success"] is True  # the handle goes on


def test_server_answers_400_for_a_lone_surrogate(handle):
    server = Server(("127.0.0.1", 0), handle, "demo")
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        def post(body: bytes) -> tuple[int, dict]:
            conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
            conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())

        status, body = post(b'{"messages": [{"role": "user", "content": "ab\\udc00"}], "max_tokens": 2}')
        assert status == 400
        assert body["error"]["message"] == "messages[0].content: not valid Unicode (lone surrogate at character 2)"
        assert body["error"]["type"] == "invalid_request_error"
        status, body = post(json.dumps({"messages": HELLO, "max_tokens": 2}).encode())
        assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"
    finally:
        server.shutdown()
        server.server_close()
