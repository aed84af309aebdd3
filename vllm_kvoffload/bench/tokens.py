"""Token counting with a Hugging Face tokenizer (``--tokenizer``, default: the model folder)."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Callable


def resolve(tokenizer: str | None, model: str | None) -> str:
    """The tokenizer to load: ``--tokenizer`` if given, else ``--model`` when it is a local folder."""
    if tokenizer:
        return tokenizer
    if model and os.path.isdir(model):
        return model
    raise ValueError(f"cannot count tokens: model {model!r} is not a local folder; "
                     "pass --tokenizer NAME_OR_PATH (a Hugging Face tokenizer)")


@lru_cache(maxsize=4)
def counter(name_or_path: str) -> Callable[[str], int]:
    """``count(text)``: tokens of ``text`` alone, without special tokens or chat template."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as err:  # noqa: BLE001 - re-raised with the name that failed
        raise ValueError(f"cannot load tokenizer {name_or_path!r}: {err}") from None
    tok.model_max_length = 1 << 60  # counting only: no "longer than the maximum" warnings
    return lambda text: len(tok.encode(text, add_special_tokens=False))
