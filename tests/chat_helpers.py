"""Test helpers for conversations: a tiny byte-level BPE tokenizer with LFM2's special tokens and chat
template, written into a HF model directory next to a tiny random model.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECIAL_TOKENS: list[str] = json.loads((ROOT / "tools" / "lfm2_special_tokens.json").read_text())
CHAT_TEMPLATE = (ROOT / "tools" / "lfm2_chat_template.jinja").read_text()
BOS, EOS, PAD = "<|startoftext|>", "<|im_end|>", "<|pad|>"
VOCAB_SIZE = 400

CORPUS = [
    "Write a Python function to sort a list.",
    "def sort_list(items):\n    return sorted(items)\n",
    "The quick brown fox jumps over the lazy dog. Hello, world!",
    "What is the weather in Paris today? It is sunny and 21 degrees.",
    "Calculate the factorial of 10: 3628800.",
    "user assistant system tool function arguments name",
    "日本語のテキストと中文文本。Émoji: 🎉🚀✓ café naïve",
    "{\"type\": \"function\", \"function\": {\"name\": \"run_code\", \"parameters\": {}}}",
    "[get_weather(city='Paris'), run_code(code='print(1)')]",
]


@lru_cache(maxsize=1)
def tokenizer_json() -> str:
    """A byte-level BPE with the 14 LFM2 special tokens at ids 0..13 (trained once per session)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    return tok.to_str()


def write_tokenizer(model_dir: Path, template_file: bool = True) -> Path:
    """Write tokenizer.json, tokenizer_config.json and (optionally) chat_template.jinja."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "tokenizer.json").write_text(tokenizer_json(), "utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
              "pad_token": PAD, "model_max_length": 4096, "clean_up_tokenization_spaces": False}
    if not template_file:
        config["chat_template"] = CHAT_TEMPLATE
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1), "utf-8")
    if template_file:
        (model_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE, "utf-8")
    return model_dir


def vocab_size() -> int:
    return json.loads(tokenizer_json())["model"]["vocab"].__len__()


def make_chat_model(path: Path, kind: str = "dense", seed: int = 0, **overrides):
    """A tiny random HF model + our tokenizer in `path` -> (path, torch model)."""
    from helpers import make_hf_model

    ids = {"bos_token_id": SPECIAL_TOKENS.index(BOS), "eos_token_id": SPECIAL_TOKENS.index(EOS),
               "pad_token_id": SPECIAL_TOKENS.index(PAD)}
    path, model = make_hf_model(path, kind=kind, seed=seed, **dict(ids, vocab_size=vocab_size(), **overrides))
    write_tokenizer(path)
    return path, model


def convert_chat_model(tmp_path: Path, kind: str = "dense", seed: int = 0, quant: str = "f32", **overrides):
    """make_chat_model + cactus convert -> (our weight dir, torch model)."""
    from cactus.convert import convert

    hf_dir, model = make_chat_model(tmp_path / "hf", kind=kind, seed=seed, **overrides)
    return convert(hf_dir, tmp_path / "weights", quant=quant), model


class ScriptedModel:
    """An engine stand-in whose greedy answer is known: after each prompt prefill, the i-th
    decode step's most likely token is `script[i]` (then eos), with probability `confidence`.
    It follows the engine contract (forward / reset / snapshot / restore / n_past / max_context)
    and records what it was fed."""

    def __init__(self, path: Path, script: list[int], confidence: float = 0.9, max_context: int = 4096,
                 eos: int = 7):
        from types import SimpleNamespace

        self.path = Path(path)
        self.script, self.confidence, self.max_context, self.eos = list(script), confidence, max_context, eos
        self.config = SimpleNamespace(vocab_size=vocab_size(), eos_token_id=(eos,), bos_token_id=1)
        self.fed: list[list[int]] = []
        self.reset()

    def reset(self) -> None:
        self.n_past, self.step = 0, 0

    def snapshot(self, detach: bool = False):
        return (self.n_past, self.step)

    def restore(self, snap) -> None:
        self.n_past, self.step = snap

    def forward(self, ids, last_only: bool = False):
        import numpy as np

        ids = [int(i) for i in ids]
        if self.n_past + len(ids) > self.max_context:
            raise ValueError("context full")
        self.fed.append(ids)
        self.n_past += len(ids)
        self.step = 0 if len(ids) > 1 else self.step + 1
        nxt = self.script[self.step] if self.step < len(self.script) else self.eos
        v = self.config.vocab_size
        logits = np.zeros((1, v), np.float32)
        # softmax gives `confidence` to nxt: e^a / (e^a + v - 1) = c
        logits[0, nxt] = np.log(self.confidence * (v - 1) / (1 - self.confidence))
        return logits
