"""The project's tiny random-weight Llama: a real vLLM model that builds offline in seconds.

Tests and CPU demos need a model vLLM can load without hub access. This module writes one
with `transformers` + `tokenizers` and `save_pretrained`:

- LlamaForCausalLM, 4 layers, hidden 256, 4 heads (4 KV heads, head_dim 64), MLP 512,
  8192 positions, float32, untied embeddings, weights from `torch.manual_seed(seed)`;
- a byte-level tokenizer: `<s>`=0, `</s>`=1, `<unk>`=2, `<pad>`=3, then one token per byte
  (byte b is id 4 + b; GPT-2's byte-to-unicode alphabet, BPE with no merges). Any text encodes
  and `decode(encode(text)) == text`. No BOS/EOS is added when encoding (no
  post-processor), so token ids map 1:1 to the bytes of the text;
- a plain chat template (`chat_template.jinja`): each message as `<|role|>`, a newline, its
  content and a newline, then `<|assistant|>` and a newline when a reply is wanted.

The build goes into a temporary sibling directory that is renamed into place only when
complete (a marker file is written last), so a half-built model is never loaded; racing
builders serialise on an `fcntl` lock file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

TINY_VOCAB_SIZE = 260
TINY_MAX_MODEL_LEN = 8192
SPECIAL_TOKENS = ("<s>", "</s>", "<unk>", "<pad>")
BOS_ID, EOS_ID, UNK_ID, PAD_ID = 0, 1, 2, 3
MODEL_DIR_NAME = "tiny-llama-v2"
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
_MARKER = ".preble_complete"


def default_model_dir() -> Path:
    """`$PREBLE_CACHE_DIR/tiny-llama-v2`, else `~/.cache/preble_tiered/tiny-llama-v2`."""
    root = os.environ.get("PREBLE_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "preble_tiered"
    return base / MODEL_DIR_NAME


def is_complete(path: str | Path) -> bool:
    """Whether `path` holds a fully built tiny model (its marker file exists)."""
    return (Path(path) / _MARKER).is_file()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode char table (what the ByteLevel pre-tokenizer emits)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _byte_vocab() -> dict[str, int]:
    """Special tokens, then byte b at id 4 + b."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for b, sym in _bytes_to_unicode().items():
        vocab[sym] = len(SPECIAL_TOKENS) + b
    return vocab


def build_tokenizer():
    """The byte-level `PreTrainedTokenizerFast` (vocab 260, bos 0, eos 1, pad 3)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = _byte_vocab()
    if len(vocab) != TINY_VOCAB_SIZE:
        raise AssertionError(f"byte vocab has {len(vocab)} entries, expected {TINY_VOCAB_SIZE}")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=TINY_MAX_MODEL_LEN,
        clean_up_tokenization_spaces=False,
    )


def build_config():
    """The LlamaConfig of the tiny model."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=TINY_MAX_MODEL_LEN,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        dtype="float32",
    )


def _write_model(out: Path, seed: int) -> None:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(build_config()).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    build_tokenizer().save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (out / _MARKER).write_text(json.dumps({"seed": seed, "vocab_size": TINY_VOCAB_SIZE}))


def build_tiny_model(path: str | Path, *, seed: int = 0) -> Path:
    """Build the tiny model into `path` (replacing what is there), atomically.

    Args:
        path: target directory; its parent is created if needed.
        seed: torch seed for the random weights (same seed, same weights).

    Returns:
        `path` as a Path, holding config, safetensors weights, tokenizer files and the
        completion marker.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.build-", dir=path.parent))
    try:
        _write_model(tmp, seed)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("built tiny model in %s (seed %d)", path, seed)
    return path


def ensure_tiny_model(path: str | Path | None = None) -> Path:
    """The tiny model at `path` (default :func:`default_model_dir`), built once if missing.

    Safe when several processes race: builders take an exclusive `fcntl` lock on a
    sibling lock file and re-check the marker under it, so exactly one builds.
    """
    path = Path(path) if path is not None else default_model_dir()
    if is_complete(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not is_complete(path):
                build_tiny_model(path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path
