"""Tokenizer and streaming detokenizer (cactus.tokenizer)."""

import json

import pytest
from chat_helpers import SPECIAL_TOKENS, write_tokenizer

from cactus.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer(write_tokenizer(tmp_path_factory.mktemp("tok")))


TEXTS = [
    ("ascii", "Write a Python function to sort a list."),
    ("emoji", "party 🎉🚀 time 👩‍💻"),
    ("cjk", "日本語のテキストと中文文本"),
    ("mixed", "café naïve — 日本 🎉 ok\n\tdef f(): return 1"),
    ("unseen characters", "ꙮ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∮ 🦎"),
]


@pytest.mark.parametrize("text", [t[1] for t in TEXTS], ids=[t[0] for t in TEXTS])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", [t[1] for t in TEXTS], ids=[t[0] for t in TEXTS])
def test_stream_pieces_are_whole_and_concatenate(tok, text):
    ids = tok.encode(text)
    stream = tok.stream()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    for piece in pieces:
        piece.encode("utf-8").decode("utf-8")  # never half a character (no lone surrogates either)
        assert "\ufffd" not in piece
    assert "".join(pieces) == text


def test_stream_holds_partial_character(tok):
    ids = tok.encode("🎉")
    assert len(ids) > 1  # a 4-byte character spans byte tokens in this vocab
    stream = tok.stream()
    assert [stream.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert stream.push(ids[-1]) == "🎉"


def test_stream_flush_gives_unfinished_bytes_as_decode_does(tok):
    ids = tok.encode("ab🎉")[:-1]  # cut inside the emoji
    stream = tok.stream()
    text = "".join(stream.push(i) for i in ids) + stream.flush()
    assert text == tok.decode(ids) and text.endswith("\ufffd")


def test_stream_of_special_tokens(tok):
    ids = tok.encode("<|tool_call_start|>[f(a='日')]<|tool_call_end|>")
    stream = tok.stream()
    pieces = [stream.push(i) for i in ids]
    assert pieces[0] == "<|tool_call_start|>"
    assert "".join(pieces) == "<|tool_call_start|>[f(a='日')]<|tool_call_end|>"


@pytest.mark.parametrize("token", SPECIAL_TOKENS)
def test_special_token_text_is_one_id(tok, token):
    assert tok.encode(f"a{token}b")[1:-1] == [SPECIAL_TOKENS.index(token)]


def test_no_bos_added_by_default(tok):
    assert tok.encode("<|startoftext|>hi")[0] == 1 and 1 not in tok.encode("hi")


def test_special_tokens_from_config(tok):
    got = (tok.bos_token, tok.bos_token_id, tok.eos_token, tok.eos_token_id)
    assert got == ("<|startoftext|>", 1, "<|im_end|>", 7)


def test_special_token_map(tok):
    assert tok.special_tokens == {t: i for i, t in enumerate(SPECIAL_TOKENS)}


def test_decode_keeps_special_tokens_unless_asked(tok):
    ids = tok.encode("<|im_start|>hi<|im_end|>")
    assert (tok.decode(ids), tok.decode(ids, skip_special_tokens=True)) == ("<|im_start|>hi<|im_end|>", "hi")


def test_token_written_as_object_in_config(tmp_path):
    d = write_tokenizer(tmp_path)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["eos_token"] = {"content": "<|endoftext|>", "special": True}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert Tokenizer(d).eos_token_id == 2


def test_missing_tokenizer_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer(tmp_path)


def test_matches_transformers_encoding(tok):
    from transformers import AutoTokenizer

    text = "<|startoftext|><|im_start|>user\n日本 🎉 sort [3, 1]<|im_end|>\n"
    hf = AutoTokenizer.from_pretrained(tok.path)
    assert tok.encode(text) == hf(text, add_special_tokens=False)["input_ids"]
