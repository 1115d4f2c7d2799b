"""Chat templates: a prompt as the user turn of the model's own chat template.

An instruction-tuned decoder-only model (SmolLM2-Instruct, Llama-3-Instruct, Qwen2-Instruct)
was trained on conversations rendered by its jinja chat template, so our prompts (Tk-Instruct
or Alpaca text, `prompts.py`) become the user turn of that template and the answer is the
assistant turn:

    text = template.render(messages=[{"role": "user", "content": prompt}],
                           add_generation_prompt=True, bos_token=..., eos_token=..., ...)

`ChatTemplate` renders the template the way transformers' `apply_chat_template(messages,
add_generation_prompt=True, tokenize=False)` does, so the text is identical for the same
messages (tests check it against transformers on the real SmolLM2 tokenizer):

- a sandboxed, immutable jinja2 environment (templates ship with downloaded models and are
  untrusted code) with `trim_blocks` and `lstrip_blocks`, and the `loopcontrols` extension,
  whose renders do bounded work and allocate bounded memory (`bounded_jinja`: operations,
  CPU time, value and output sizes); any failure to compile or render -- a sandbox refusal,
  a budget exceeded, `raise_exception`, a non-string template -- is a `VocabularyError`
  naming the file the template came from;
- `tojson` that keeps non-ASCII characters and accepts indent / separators / sort_keys,
  `raise_exception(message)` and `strftime_now(format)`, which templates call;
- `{% generation %}...{% endgeneration %}` (assistant-mask markers) render their body;
- the variables `messages`, `add_generation_prompt`, `tools` / `documents` (None) and the
  special-token strings `bos_token`, `eos_token`, `unk_token`, `pad_token`.

The template's own default turns stay: SmolLM2's template adds a system turn ("You are a
helpful AI assistant named SmolLM, ...") when the conversation has none.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import json
from typing import Any, Mapping, Sequence

from activeit_jax.data import bounded_jinja
from activeit_jax.data.errors import VocabularyError

USER, ASSISTANT = "user", "assistant"


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    # jinja's own tojson escapes HTML characters, which would change the rendered prompt.
    bounded_jinja.check_json_layout(indent, separators)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    import jinja2
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> tuple[Any, Any]:
    """(its bounded environment, the compiled template), cached: one per distinct text."""
    import jinja2
    import jinja2.ext

    class GenerationBlock(jinja2.ext.Extension):
        """`{% generation %}body{% endgeneration %}` renders `body` (assistant-mask markers
        that some templates carry; we never need the mask)."""
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body
                                          ).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    env = bounded_jinja.BoundedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, GenerationBlock])
    env.filters["tojson"] = _tojson
    env.bound_filters()
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    return env, env.compile_template(template)


class ChatTemplate:
    """A model's jinja chat template with the special-token strings it may refer to.

    Args:
      template: the jinja source (e.g. `HFTokenizerVocabulary.chat_template`).
      special_tokens: {"bos_token": text, "eos_token": text, ...}; absent names render as
        undefined (empty), as in transformers when the tokenizer lacks that token.
      source: the file the template came from, named in every error.
      limits: the budget of each render (`bounded_jinja.Limits`).

    Raises:
      VocabularyError: the template is not a string or does not compile (the jinja message
        is kept), naming `source`.
    """

    def __init__(self, template: str, special_tokens: Mapping[str, str] | None = None,
                 source: str | None = None,
                 limits: bounded_jinja.Limits = bounded_jinja.LIMITS):
        self.source = source
        self.limits = limits
        if not isinstance(template, str):
            raise VocabularyError(f"the chat template must be a string, got "
                                  f"{type(template).__name__}", source)
        self.template = template
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        try:
            self._env, self._compiled = _compile(template)
        except Exception as err:  # noqa: BLE001 - a template is data: any failure is its own
            raise VocabularyError(f"the chat template does not compile "
                                  f"({_describe(err)})", source) from None

    @property
    def sha256(self) -> str:
        """Hash of the template text (part of a scoring run's fingerprint)."""
        return hashlib.sha256(self.template.encode("utf-8")).hexdigest()

    def render(self, messages: Sequence[Mapping[str, Any]],
               add_generation_prompt: bool = True) -> str:
        """The conversation as the template writes it.

        Args:
          messages: [{"role": ..., "content": ...}, ...].
          add_generation_prompt: append the header that opens the assistant's turn.

        Returns:
          The rendered text (special-token markup included, e.g. `<|im_start|>`).

        Raises:
          VocabularyError: the template fails or goes past its budget (the reason and the
            file named); nothing else escapes, whatever the template does.
        """
        try:
            return self._env.render(self._compiled, self.limits,
                                    messages=[dict(m) for m in messages], tools=None,
                                    documents=None, add_generation_prompt=add_generation_prompt,
                                    **self.special_tokens)
        except Exception as err:  # noqa: BLE001 - a template is data: any failure is its own
            raise VocabularyError(f"the chat template cannot be rendered ({_describe(err)})",
                                  self.source) from None

    def user_prompt(self, text: str) -> str:
        """`text` as the only user turn, followed by the opening of the assistant's turn: the
        prompt a chat model continues with its answer."""
        return self.render([{"role": USER, "content": text}], add_generation_prompt=True)


def _describe(err: BaseException) -> str:
    """An exception raised by a template, in a few words (type and message, one line)."""
    text = " ".join(str(err).split())
    if len(text) > 300:
        text = text[:300] + "..."
    if isinstance(err, bounded_jinja.TemplateBudgetError):
        return f"stopped: {text}"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def special_token_strings(vocabulary: Any) -> dict[str, str]:
    """{"bos_token": ..., "eos_token": ..., "unk_token": ...} of a Hugging Face vocabulary
    (the strings its template may refer to; missing tokens are left out)."""
    tokenizer = getattr(vocabulary, "tokenizer", None)
    out: dict[str, str] = {}
    if tokenizer is None:
        return out
    for name in ("bos", "eos", "unk"):
        token_id = getattr(vocabulary, f"{name}_id", None)
        text = tokenizer.id_to_token(int(token_id)) if token_id is not None else None
        if text is not None:
            out[f"{name}_token"] = text
    return out


def from_vocabulary(vocabulary: Any) -> ChatTemplate | None:
    """The chat template a vocabulary carries (`HFTokenizerVocabulary.chat_template`), or
    None (SentencePiece vocabularies and tokenizers without a template)."""
    template = getattr(vocabulary, "chat_template", None)
    if template is None or template == "":
        return None
    return ChatTemplate(template, special_token_strings(vocabulary),
                        source=getattr(vocabulary, "source", None))
