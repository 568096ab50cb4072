"""The model's chat template on the router: OpenAI `messages` -> prompt text.

Templates are read as Hugging Face stores them (`chat_template.jinja`, else the
`chat_template` entry of `tokenizer_config.json`) and rendered the way `transformers` renders
them, for text messages: Jinja in a sandbox with `trim_blocks`, `lstrip_blocks` and loop
controls, with `messages` (role, content, name), `bos_token`, `eos_token`,
`add_generation_prompt`, `raise_exception` and `strftime_now` in scope (no tools, no
documents). The rendered text holds
its own special tokens, so it is encoded without adding any (as vLLM does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(ValueError):
    """The template refused the messages (its `raise_exception`) or failed to render."""


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    bos_token: str = ""
    eos_token: str = ""

    def __post_init__(self) -> None:
        """Raises TemplateError when the template does not compile."""
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            object.__setattr__(self, "_compiled", env.from_string(self.source))
        except jinja2.TemplateError as e:
            raise TemplateError(f"the model's chat template does not compile: {e}") from None

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text of `messages` (each {"role", "content"[, "name"]}).

        Raises:
            TemplateError: the template refused them or failed (the message says why).
        """
        try:
            return self._compiled.render(messages=messages, bos_token=self.bos_token, eos_token=self.eos_token,
                                         add_generation_prompt=add_generation_prompt)
        except TemplateError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the template does with odd messages is the request's fault
            raise TemplateError(f"the model's chat template failed on these messages: {e}") from None


def _raise(message: str) -> None:
    raise TemplateError(f"the model's chat template refused the messages: {message}")


def load_chat_template(model_dir: str | Path) -> ChatTemplate | None:
    """The chat template stored with the model at `model_dir`, or None when it has none.

    Raises:
        TemplateError: the template does not compile.
    """
    d = Path(model_dir)
    config: dict = {}
    try:
        config = json.loads((d / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        pass
    source = None
    if (d / "chat_template.jinja").is_file():
        source = (d / "chat_template.jinja").read_text()
    else:
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: the default one
            source = next((t.get("template") for t in source if t.get("name") == "default"), None)
    if not isinstance(source, str) or not source:
        return None
    return ChatTemplate(source, _token_text(config.get("bos_token")), _token_text(config.get("eos_token")))


def _token_text(tok) -> str:
    if isinstance(tok, dict):  # AddedToken serialised
        return str(tok.get("content", ""))
    return tok if isinstance(tok, str) else ""
