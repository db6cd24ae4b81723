"""Token counts with the served model's tokenizer (or an estimate when none is configured)."""

from __future__ import annotations

import math
from pathlib import Path

from tokenizers import Tokenizer

__all__ = ["TokenCounter"]


class TokenCounter:
    def __init__(self, tokenizer_path: str = "") -> None:
        self._tokenizer: Tokenizer | None = None
        if tokenizer_path:
            path = Path(tokenizer_path)
            file = path / "tokenizer.json" if path.is_dir() else path
            if not file.is_file():
                raise FileNotFoundError(f"TOKENIZER_PATH {tokenizer_path}: no tokenizer.json there")
            self._tokenizer = Tokenizer.from_file(str(file))

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None

    def count(self, text: str) -> int:
        if self._tokenizer is None:
            # About four bytes a token for English with BPE vocabularies.
            return math.ceil(len(text.encode()) / 4)
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)
