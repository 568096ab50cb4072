"""The model's tokenizer on the router (text prompts and named prefixes given as text)."""

from __future__ import annotations

from pathlib import Path

import grpc

from preble_tiered.router.errors import RequestError


class Tokenizer:
    """`encode(text, add_special_tokens=True) -> list[int]` over a `tokenizers` file or a
    transformers tokenizer (False: no BOS/EOS added, for text a chat template rendered)."""

    def __init__(self, encode) -> None:
        self.encode = encode


def load_tokenizer(path: str) -> Tokenizer:
    """The model's tokenizer: tokenizer.json through `tokenizers` (fast, light), else transformers.

    Raises:
        RequestError: FAILED_PRECONDITION when neither can load one from `path`.
    """
    p = Path(path)
    if (p / "tokenizer.json").is_file():
        from tokenizers import Tokenizer as _Fast

        tok = _Fast.from_file(str(p / "tokenizer.json"))
        return Tokenizer(lambda text, add_special_tokens=True:
                         tok.encode(text, add_special_tokens=add_special_tokens).ids)
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any loader failure means the same thing to the client
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot load a tokenizer from {path}: {e}") from None
    return Tokenizer(lambda text, add_special_tokens=True: hf.encode(text, add_special_tokens=add_special_tokens))
