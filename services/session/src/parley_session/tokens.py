"""Token counts with the served model's tokenizer and chat template (estimates when none is set).

`TOKENIZER_PATH` names the model folder (or its `tokenizer.json`). The folder's chat template
(`chat_template.jinja`, or `chat_template` in `tokenizer_config.json`) is rendered the way
`transformers`' `apply_chat_template` renders it, so `prompt_tokens` is the exact number of tokens
the worker will feed the model, template included. The tokenizer cuts text at its added (special)
tokens before anything else, so a rendered prompt is counted piece by piece between them, and a
piece already counted (a message seen in an earlier turn) is not tokenized again::

    counter = TokenCounter("/models/llama")
    counter.count("Hello")                                        # content tokens
    counter.prompt_tokens([("system", "Be brief."), ("user", "Hello")])  # the whole prompt
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

__all__ = ["TokenCounter"]

# Without a tokenizer: about four bytes a token for English with BPE vocabularies, and a few
# tokens of template around each message.
_ESTIMATED_OVERHEAD = 4
_PROBE = "x"
_ROLES = ("system", "user", "assistant")
_PIECES_KEPT = 50_000
# Conversations whose count, piece by piece, must equal the tokenizer's own before pieces are used.
_CHECKS = (
    [("system", "Be brief."), ("user", "Hello!"), ("assistant", " Hi\n\n"), ("user", "\tWhy?  ")],
    [("user", "\n\n\nx y z"), ("assistant", "end with spaces   "), ("user", "émoji 😀 and 42")],
)


class TokenCounter:
    """Counts content tokens and whole prompts; implements the domain's `PromptFormat`."""

    def __init__(self, tokenizer_path: str = "") -> None:
        self._tokenizer: Tokenizer | None = None
        self._render: Callable[[Sequence[tuple[str, str]]], str] | None = None
        self._splitter: re.Pattern[str] | None = None
        self._pieces: OrderedDict[str, int] = OrderedDict()
        self._overheads = dict.fromkeys(_ROLES, _ESTIMATED_OVERHEAD)
        self.fixed_tokens = 0
        if not tokenizer_path:
            return
        path = Path(tokenizer_path)
        folder = path if path.is_dir() else path.parent
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"TOKENIZER_PATH {tokenizer_path}: no tokenizer.json there")
        self._tokenizer = Tokenizer.from_file(str(file))
        self._render = _load_template(folder)
        if self._render is not None:
            self._splitter = self._piece_splitter()
            self._measure_template()

    @property
    def exact(self) -> bool:
        """Whether prompt counts are exact (a tokenizer and its chat template are loaded)."""
        return self._tokenizer is not None and self._render is not None

    def count(self, text: str) -> int:
        if self._tokenizer is None:
            return math.ceil(len(text.encode()) / 4)
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest start of `text` of at most `max_tokens` tokens, cut between tokens."""
        if max_tokens <= 0:
            return ""
        if self._tokenizer is None:
            return text.encode()[: max_tokens * 4].decode(errors="ignore")
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        if len(encoding.ids) <= max_tokens:
            return text
        return text[: encoding.offsets[max_tokens - 1][1]]

    def message_tokens(self, role: str, content_tokens: int) -> int:
        """One message's share of a prompt: its content and the template around it (an estimate
        for templates whose pieces are not independent; `prompt_tokens` is always exact)."""
        return content_tokens + self._overheads.get(role, _ESTIMATED_OVERHEAD)

    def prompt_tokens(self, messages: Sequence[tuple[str, str]]) -> int:
        """The tokens of `messages` rendered by the chat template, with the assistant's cue."""
        if self._render is None:
            return self.fixed_tokens + sum(
                self.message_tokens(role, self.count(text)) for role, text in messages
            )
        return self._encode(self._render(messages))

    def _encode(self, rendered: str) -> int:
        assert self._tokenizer is not None
        if self._splitter is None:
            # As apply_chat_template does: the template writes the special tokens itself.
            return len(self._tokenizer.encode(rendered, add_special_tokens=False).ids)
        total = 0
        # re.split with a group: text pieces at even positions, added tokens at odd ones.
        for index, piece in enumerate(self._splitter.split(rendered)):
            if index % 2:
                total += 1
            elif piece:
                total += self._piece_tokens(piece)
        return total

    def _piece_tokens(self, piece: str) -> int:
        known = self._pieces.get(piece)
        if known is not None:
            self._pieces.move_to_end(piece)
            return known
        assert self._tokenizer is not None
        count = len(self._tokenizer.encode(piece, add_special_tokens=False).ids)
        self._pieces[piece] = count
        if len(self._pieces) > _PIECES_KEPT:
            self._pieces.popitem(last=False)
        return count

    def _piece_splitter(self) -> re.Pattern[str] | None:
        """A pattern that cuts text where the tokenizer does (at its added tokens), or None
        where the pieces would not count the same as the whole (added tokens that eat the
        whitespace around them, or that are matched after normalization)."""
        assert self._tokenizer is not None
        assert self._render is not None
        added = list(self._tokenizer.get_added_tokens_decoder().values())
        if not added or any(
            t.lstrip or t.rstrip or t.single_word or (t.normalized and self._tokenizer.normalizer)
            for t in added
        ):
            return None
        # Longest first: at one position the longest added token wins, as in the tokenizer.
        contents = sorted({t.content for t in added}, key=len, reverse=True)
        splitter = re.compile("(" + "|".join(re.escape(c) for c in contents) + ")")
        whole = self._tokenizer
        for messages in _CHECKS:
            try:
                rendered = self._render(messages)
            except jinja2.TemplateError:
                continue
            pieces = splitter.split(rendered)
            counted = sum(
                1 if i % 2 else len(whole.encode(p, add_special_tokens=False).ids)
                for i, p in enumerate(pieces)
                if p
            )
            if counted != len(whole.encode(rendered, add_special_tokens=False).ids):
                return None
        return splitter

    def _measure_template(self) -> None:
        probe = self.count(_PROBE)
        try:
            self.fixed_tokens = self.prompt_tokens([])
        except jinja2.TemplateError:
            self.fixed_tokens = 0  # a template that needs a message: the first one carries it
        for role in _ROLES:
            try:
                alone = self.prompt_tokens([(role, _PROBE)])
                self._overheads[role] = alone - self.fixed_tokens - probe
            except jinja2.TemplateError:
                # Some templates refuse a conversation that does not start with the user; the
                # estimate only guides truncation (every prompt is counted exactly), so a
                # template that refuses this too keeps the default.
                with contextlib.suppress(jinja2.TemplateError):
                    first = self.prompt_tokens([("user", _PROBE)])
                    both = self.prompt_tokens([("user", _PROBE), (role, _PROBE)])
                    self._overheads[role] = both - first - probe


def _load_template(folder: Path) -> Callable[[Sequence[tuple[str, str]]], str] | None:
    config: dict[str, Any] = {}
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
    template_file = folder / "chat_template.jinja"
    source = (
        template_file.read_text()
        if template_file.is_file()
        else _template_from_config(config.get("chat_template"))
    )
    if source is None:
        return None
    # The same environment as transformers' apply_chat_template.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    template = env.from_string(source)
    special = {
        key: _token_text(value)
        for key, value in config.items()
        if key.endswith("_token") and _token_text(value) is not None
    }

    def render(messages: Sequence[tuple[str, str]]) -> str:
        return template.render(
            messages=[{"role": role, "content": content} for role, content in messages],
            add_generation_prompt=True,
            tools=None,
            documents=None,
            **special,
        )

    return render


def _template_from_config(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        default = named.get("default")
        return default if isinstance(default, str) else None
    return None


def _token_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _tojson(
    value: object,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)
