"""Character-level tokenizer for the tiny-arith testbed (one token per character)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)
CHARACTERS = "0123456789+-*()= "


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A fast tokenizer over digits, ``+-*()=`` and space; specials ``<pad>``, ``<eos>``, ``<unk>``.

    Ids are fixed: specials first (``<pad>`` = 0, ``<eos>`` = 1, ``<unk>`` = 2), then the characters
    in the order of :data:`CHARACTERS`. Padding is on the left, as generation with TRL expects.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + tuple(CHARACTERS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        model_max_length=64,
    )
