"""A tiny random Llama chat model for tests and local development.

Model weights cannot be downloaded here, so tests build their own model: a 2-layer Llama with
random weights and a byte-level BPE tokenizer trained on a few local paragraphs, saved with
``save_pretrained`` so that it loads through the real path::

    from parley_devstack.tiny_model import build_tiny_model

    path = build_tiny_model(tmp_path / "tiny-llama")
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)

Its text is gibberish; its speed and plumbing are real. The attention head size is 64 because
vLLM's CPU backend supports no other. From the command line::

    python -m parley_devstack.tiny_model PATH
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["CHAT_TEMPLATE", "build_tiny_model", "main"]

# Bump when the recipe changes, so that a model built by an older recipe is not reused.
_RECIPE_VERSION = 1
_STAMP_FILE = "parley-tiny-model.json"

_BOS = "<|begin_of_text|>"
_EOS = "<|end_of_text|>"
_PAD = "<|pad|>"
_IM_START = "<|im_start|>"
_IM_END = "<|im_end|>"
_SPECIAL_TOKENS = [_PAD, _BOS, _EOS, _IM_START, _IM_END]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)

_VOCAB_SIZE = 1280

_CORPUS = """\
Parley is a place to talk with a language model. A user opens a conversation, writes a \
question, and the assistant answers, one token after another, while the words appear on the \
screen. Behind the page, a gateway accepts the message, a session service remembers what was \
said before, a cache looks for answers that were already given, and a worker runs the model.

The worker reads requests from a queue. For each request it builds a prompt from the system \
message, the earlier turns of the conversation and the new question. It counts the tokens of \
the prompt, checks that they fit in the context window, and starts to generate. Every few \
milliseconds a new piece of text is ready; the worker sends it back at once, so that nobody \
waits for the whole answer before reading the first words.

When a user closes the page, the answer is no longer needed. The worker notices that the \
stream was cancelled and stops the generation within one step, which frees its slot for the \
next request in the queue. Slots are scarce: a graphics card holds a fixed number of \
sequences, and a processor has only a few cores.

Good answers are short, kind and correct. If a question is unclear, ask what was meant. If \
the answer is not known, say so, and explain how it could be found: which document to read, \
which command to run, which person to ask. Numbers should carry their units, dates their \
year, and advice its reasons.

The weather today is mild, with clouds in the morning and sun in the afternoon. A light wind \
comes from the west. Tomorrow will be colder, and rain is expected in the evening, so take an \
umbrella if you go out after six o'clock.

To bake bread, mix flour, water, salt and yeast. Knead the dough for ten minutes, let it rise \
for an hour, shape it, let it rise again, and bake it in a hot oven for forty minutes. The \
crust should be brown and the loaf should sound hollow when you knock on its bottom.

Question: What is the capital of France? Answer: Paris. Question: How many days are in a \
week? Answer: Seven. Question: Why is the sky blue? Answer: Because air scatters blue light \
more than red light. Hello! How can I help you today? Thank you, that was helpful.

A library lends books, music and films. Members borrow up to twelve items for three weeks and \
may renew them twice, unless another member has reserved them. Late returns cost twenty cents \
a day. The reading room opens at nine in the morning and closes at eight in the evening, \
except on Sundays, when it is open from noon until five.

def greet(name: str) -> str:
    return f"Hello, {name}!"

for index, value in enumerate([3, 1, 4, 1, 5, 9, 2, 6]):
    print(index, value * 2)

The train leaves the station at 07:45 and arrives at 10:20, after stopping in four towns. \
Tickets bought online are cheaper than tickets bought on board; children under six travel \
free, and bicycles need a reservation between April and October.

Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. Plants, algae and \
some bacteria do it with chlorophyll, a green pigment that absorbs red and blue light and \
reflects green. Without it, there would be almost no oxygen in the air we breathe.

Dear team, thank you for the meeting on Thursday. As agreed, the release moves to the second \
week of March; testing starts on Monday, the documentation is updated by Wednesday, and the \
final review takes place on Friday afternoon. Please send questions before the weekend. Best \
regards, Maria.
"""


def build_tiny_model(dest: Path, *, seed: int = 0) -> Path:
    """Build the tiny chat model in ``dest`` unless it is already there; return ``dest``.

    The model is written to a temporary folder beside ``dest`` and renamed into place, so a
    reader never sees half a model, and concurrent builders agree on one result. A folder at
    ``dest`` that holds something else (another seed, an older recipe, unrelated files) is an
    error rather than being overwritten; an empty one is replaced.
    """
    dest = Path(dest)
    stamp = {"recipe": _RECIPE_VERSION, "seed": seed}
    if _is_built(dest, stamp):
        return dest
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise FileExistsError(
            f"{dest} exists but is not a tiny model built with seed={seed} by recipe "
            f"{_RECIPE_VERSION}; remove it or choose another path"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _write_model(tmp, seed=seed)
        (tmp / _STAMP_FILE).write_text(json.dumps(stamp) + "\n")
        # mkdtemp's 0700 (and safetensors' 0600) would hide the model from other users.
        os.chmod(tmp, 0o755)
        for file in tmp.iterdir():
            os.chmod(file, 0o644)
        try:
            tmp.rename(dest)
        except OSError:
            # Another builder won the race; its model is identical.
            if not _is_built(dest, stamp):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _is_built(dest: Path, stamp: dict[str, int]) -> bool:
    try:
        found = json.loads((dest / _STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(found == stamp)


def _write_model(folder: Path, *, seed: int) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe,
        bos_token=_BOS,
        eos_token=_IM_END,
        pad_token=_PAD,
        additional_special_tokens=[_IM_START, _EOS],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    ids = {token: _token_id(bpe, token) for token in _SPECIAL_TOKENS}

    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        bos_token_id=ids[_BOS],
        eos_token_id=[ids[_IM_END], ids[_EOS]],
        pad_token_id=ids[_PAD],
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
        with torch.no_grad():
            # A zero output row gives a special token the median logit: greedy decoding never
            # picks it and sampling rarely does, so a generation yields visible text instead of
            # ending the turn at once.
            for token_id in ids.values():
                model.lm_head.weight[token_id].zero_()
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=ids[_BOS],
        eos_token_id=[ids[_IM_END], ids[_EOS]],
        pad_token_id=ids[_PAD],
    )
    with _progress_bars_disabled():
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise RuntimeError(f"the trained tokenizer lacks the special token {token!r}")
    return token_id


@contextmanager
def _progress_bars_disabled() -> Iterator[None]:
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m parley_devstack.tiny_model PATH", file=sys.stderr)
        return 2
    print(build_tiny_model(Path(args[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
