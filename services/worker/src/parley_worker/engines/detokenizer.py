"""Generated tokens to streamed text, so that the pieces add up to the decoded whole.

A token's text can depend on its neighbours, and with a byte-level BPE tokenizer one character
can span tokens: decoded alone, each part is U+FFFD. ``IncrementalDetokenizer`` uses the sliding
window of text-generation-inference (and vLLM's slow path): it decodes from the token before the
new ones and holds text back while it ends in an incomplete character::

    detokenizer = IncrementalDetokenizer(tokenizer)
    e4, b8, ad = tokenizer.convert_tokens_to_ids(["ä", "¸", "Ń"])  # the bytes of 中
    detokenizer.add(e4)     # -> ""
    detokenizer.add(b8)     # -> ""
    detokenizer.add(ad)     # -> "中"
    detokenizer.flush()     # -> ""   (what is still held, at the end)

The concatenation of what ``add`` and ``flush`` return is ``tokenizer.decode(ids)``.
"""

from __future__ import annotations

from typing import cast

from transformers import PreTrainedTokenizerBase

__all__ = ["IncrementalDetokenizer"]

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    __slots__ = ("_ids", "_prefix_offset", "_read_offset", "_skip_special_tokens", "_tokenizer")

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, *, skip_special_tokens: bool = True
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0  # the window's start: the token before the unread ones
        self._read_offset = 0  # tokens before this one have been returned as text

    def add(self, token_id: int) -> str:
        """The text this token completes; "" while it may be part of a longer character."""
        self._ids.append(token_id)
        return self._next_text(final=False)

    def flush(self) -> str:
        """The text held back, once no token follows (an incomplete character is U+FFFD)."""
        return self._next_text(final=True)

    def _next_text(self, *, final: bool) -> str:
        before = self._decode(self._ids[self._prefix_offset : self._read_offset])
        after = self._decode(self._ids[self._prefix_offset :])
        if len(after) > len(before) and (final or not after.endswith(_REPLACEMENT)):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return after[len(before) :]
        return ""

    def _decode(self, token_ids: list[int]) -> str:
        return cast(
            str, self._tokenizer.decode(token_ids, skip_special_tokens=self._skip_special_tokens)
        )
