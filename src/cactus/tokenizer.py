"""The model's tokenizer: `tokenizer.json` through the `tokenizers` library, the special tokens named
in `tokenizer_config.json`, and a streaming detokenizer that only hands out whole characters.
"""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers

REPLACEMENT = "\ufffd"  # what decoding gives for bytes that do not (yet) form a character


class Tokenizer:
    """Text <-> ids for one model directory (HF layout: tokenizer.json, tokenizer_config.json)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {path}")
        self.path = file.parent
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(file))
        except Exception as e:  # the Rust side raises a bare Exception
            raise ValueError(f"{file}: cannot read the tokenizer ({e})") from None
        cfg_file = self.path / "tokenizer_config.json"
        self.config: dict = read_json_object(cfg_file) if cfg_file.is_file() else {}
        added = self._tok.get_added_tokens_decoder()  # {id: AddedToken}
        # Special tokens as the model defines them: matched whole in text, kept by decode().
        self.special_tokens: dict[str, int] = {t.content: i for i, t in sorted(added.items()) if t.special}
        names = ("bos_token", "eos_token", "pad_token", "unk_token")
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = (
            _token_content(self.config, name, cfg_file) for name in names)
        self.bos_token_id = self.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_token_id = self.token_to_id(self.eos_token) if self.eos_token else None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def vocab(self) -> dict[str, int]:
        """Every token's text -> its id (added tokens included)."""
        return self._tok.get_vocab(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Text -> ids. Special-token text (`<|im_start|>`...) becomes its single id. A rendered
        chat template already holds the bos token, so nothing is added unless asked."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

    def template_tokens(self) -> dict[str, str]:
        """The special tokens a chat template may refer to (`bos_token`, ...), as transformers passes them."""
        names = {"bos_token": self.bos_token, "eos_token": self.eos_token,
                 "pad_token": self.pad_token, "unk_token": self.unk_token}
        return {k: v for k, v in names.items() if v is not None}

    def stream(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Ids in, text out, one whole character at a time.

    Byte-level BPE splits multi-byte characters across tokens, so a token alone may decode to
    half a character. We decode a window `ids[prefix:]` that starts on a character boundary and
    hand out only what it adds past `ids[prefix:read]`, and only when it does not end in an
    unfinished character. The window start is always where an earlier piece ended whole, so
    every piece is valid text and the pieces concatenate to `decode(ids)`. Decoding the same
    leading tokens twice also cancels decoder quirks such as a stripped leading space.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read] decode to the tail of what was already handed out
        self._read = 0

    def push(self, token_id: int) -> str:
        """Add one id -> the new complete text ("" while a character is unfinished)."""
        self.ids.append(int(token_id))
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever is still held (an unfinished character decodes to U+FFFD, as decode() does)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read == len(self.ids):
            return ""
        prefix_text = self.tokenizer.decode(self.ids[self._prefix:self._read])
        new_text = self.tokenizer.decode(self.ids[self._prefix:])
        if not final and (len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT)):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return new_text[len(prefix_text):]


def read_json_object(file: Path) -> dict:
    """A JSON object file (tokenizer_config.json, generation_config.json...); errors name the file."""
    try:
        value = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{file}: not valid UTF-8 at byte {e.start}") from None
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(value).__name__}")
    return value


def _token_content(config: dict, name: str, file: Path) -> str | None:
    """tokenizer_config stores a special token as a string or as {"content": ...} (or null)."""
    value = config.get(name)
    if isinstance(value, dict):
        value = value.get("content")
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{file}: {name} must be a string or {{\"content\": string}}, got {config[name]!r:.60}")
    return value or None


__all__ = ["StreamDecoder", "Tokenizer"]
