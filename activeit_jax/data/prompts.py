"""Prompt encoding: Tk-Instruct and Stanford Alpaca, plain or as the user turn of a chat.

Prompt formats (`PROMPT_FORMATS`; `default_prompt_format` picks one per model and task):

    tk_instruct        the Tk-Instruct source below (T5; plain decoder-only models on NIV2)
    alpaca             the Stanford Alpaca template (plain decoder-only models, Self-Instruct)
    tk_instruct_chat   the Tk-Instruct source as the user turn of the model's chat template
    alpaca_chat        the Alpaca instruction (+ "\\n\\n" + input) as the user turn

A chat format renders the inner text, then the model's template around it
(`chat.ChatTemplate.user_prompt`: the template's default system turn, the user turn, the
opening of the assistant turn); the answer follows as the assistant turn, which the model
closes with its end-of-turn token. The parts are perturbed before rendering, so a chat prompt
perturbs exactly what the plain prompt perturbs.

Tk-Instruct format, as `DataCollatorForNI` in yizhongw/Tk-Instruct `src/ni_collator.py` builds
it with add_task_definition=True, num_pos_examples=2, num_neg_examples=0,
add_explanation=False, add_task_name=False (strings reproduced character for character;
`+ "."` means a period is appended when the text so far does not end in
`string.punctuation`):

    "Definition: " + definition.strip()  (+ ".")  + "\\n\\n"
    for k = 1, 2:
      " Positive Example {k} -\\n"                        <- note the leading space
      + "Input: " + example.input.strip()  (+ ".")  + "\\n"
      + " Output: " + example.output.strip()  (+ ".")  + "\\n"   <- leading space again
      + "\\n"
    "Now complete the following example -\\n"
    + "Input: " + instance.input.strip()  (+ ".")  + "\\n"
    + "Output: "

Positive examples are added one at a time, and only while the source still fits
max_source_length tokens: the collator tests
`definition + " ".join(accepted examples) + candidate example + task input`
and stops at the first example that does not fit. `render_tk_instruct` reproduces that test
string exactly (it equals the final source for the first two examples) and leaves the length
check to a tokenizer-agnostic `fits` callable (`make_fits` builds one from a seqio vocabulary).
A source that is too long even without examples is truncated later, at tokenisation, to
max_source_length tokens (Tk-Instruct truncates the same way; SeqIO trims then appends EOS).

The parts of a prompt (definition, example inputs, example outputs, instance input) stay
separately addressable in `PromptParts`: the scorer perturbs the definition and the example
inputs, then re-renders with the same function.
"""
from __future__ import annotations

import dataclasses
import string
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import seqio

    from activeit_jax.data.chat import ChatTemplate
    from activeit_jax.data.niv2 import Instance, Task

MAX_SOURCE_LENGTH = 1024  # Tk-Instruct max_source_length
MAX_TARGET_LENGTH = 128   # Tk-Instruct max_target_length
NUM_POS_EXAMPLES = 2

TK_INSTRUCT = "tk_instruct"
ALPACA = "alpaca"
TK_INSTRUCT_CHAT = "tk_instruct_chat"
ALPACA_CHAT = "alpaca_chat"
PROMPT_FORMATS = (TK_INSTRUCT, ALPACA, TK_INSTRUCT_CHAT, ALPACA_CHAT)
CHAT_FORMATS = (TK_INSTRUCT_CHAT, ALPACA_CHAT)
AUTO = "auto"  # `default_prompt_format` per task

# Stanford Alpaca's PROMPT_DICT (tatsu-lab/stanford_alpaca train.py), verbatim. The no-input
# variant is used when the input is exactly "" (Alpaca's `example.get("input", "") != ""`).
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)

Fits = Callable[[str], bool]


@dataclasses.dataclass(frozen=True)
class PromptParts:
    """The pieces a prompt is rendered from; raw text (rendering strips and punctuates).

    Attributes:
      definition: the task definition (Self-Instruct: the instruction).
      example_inputs: inputs of the positive examples, in order.
      example_outputs: outputs of the positive examples (same length as example_inputs).
      instance_input: the input of the instance to complete.
    """
    definition: str
    example_inputs: tuple[str, ...]
    example_outputs: tuple[str, ...]
    instance_input: str

    def __post_init__(self):
        if len(self.example_inputs) != len(self.example_outputs):
            raise ValueError(f"{len(self.example_inputs)} example inputs but "
                             f"{len(self.example_outputs)} example outputs")

    def replace(self, **changes) -> "PromptParts":
        """A copy with some parts replaced (e.g. a perturbed definition)."""
        return dataclasses.replace(self, **changes)


def tk_instruct_parts(task: "Task", instance: "Instance",
                      num_pos_examples: int = NUM_POS_EXAMPLES) -> PromptParts:
    """The parts of the Tk-Instruct prompt of one instance.

    Args:
      task: the task (definition and positive examples).
      instance: the instance to complete.
      num_pos_examples: how many positive examples, from the first (Tk-Instruct: 2).

    Returns:
      PromptParts; negative examples and explanations are never used.
    """
    examples = task.positive_examples[:num_pos_examples]
    return PromptParts(definition=task.definition,
                       example_inputs=tuple(e.input for e in examples),
                       example_outputs=tuple(e.output for e in examples),
                       instance_input=instance.input)


def _end_punctuated(text: str) -> str:
    """Appends "." unless `text` ends in ASCII punctuation (the collator's rule)."""
    return text if text and text[-1] in string.punctuation else text + "."


def tk_definition_block(definition: str) -> str:
    """"Definition: ...\\n\\n" exactly as the collator writes it."""
    return _end_punctuated("Definition: " + definition.strip()) + "\n\n"


def tk_example_block(index: int, example_input: str, example_output: str) -> str:
    """One positive example block, 1-based `index`, exactly as the collator writes it."""
    block = f" Positive Example {index} -\n"
    block = _end_punctuated(block + f"Input: {example_input.strip()}") + "\n"
    block = _end_punctuated(block + f" Output: {example_output.strip()}") + "\n"
    return block + "\n"


def tk_instance_block(instance_input: str) -> str:
    """The "Now complete the following example" block, ending in "Output: "."""
    block = "Now complete the following example -\n"
    block = _end_punctuated(block + f"Input: {instance_input.strip()}") + "\n"
    return block + "Output: "


def render_tk_instruct(parts: PromptParts, fits: Fits | None = None,
                       add_definition: bool = True) -> str:
    """Renders the Tk-Instruct source string.

    Args:
      parts: the prompt parts (all of `parts.example_inputs` are candidates, in order).
      fits: `fits(text) -> bool`, True when `text` encodes within max_source_length tokens;
        None accepts every example (no length limit).
      add_definition: False renders the examples-only variant (no "Definition:" block).

    Returns:
      The source text: definition block + accepted examples + instance block.
    """
    definition = tk_definition_block(parts.definition) if add_definition else ""
    task_input = tk_instance_block(parts.instance_input)
    accepted: list[str] = []
    for k, (example_input, example_output) in enumerate(
            zip(parts.example_inputs, parts.example_outputs), start=1):
        block = tk_example_block(k, example_input, example_output)
        # The collator's test string joins earlier examples with " " (and the final source
        # with ""); they agree for the two examples Tk-Instruct uses. Keep its exact test.
        if fits is None or fits(definition + " ".join(accepted) + block + task_input):
            accepted.append(block)
        else:
            break
    return definition + "".join(accepted) + task_input


def alpaca_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 (Alpaca's name)
    """The Stanford Alpaca prompt (with-input variant unless `input == ""`).

    Args:
      instruction: the instruction.
      input: the optional input; "" selects the no-input template.

    Returns:
      The prompt, ending in "### Response:" (the response follows directly).
    """
    if input != "":
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def render_alpaca(parts: PromptParts) -> str:
    """Alpaca prompt of `parts` (definition = instruction; examples are not shown)."""
    return alpaca_prompt(parts.definition, parts.instance_input)


def alpaca_user_message(parts: PromptParts) -> str:
    """The user turn of `alpaca_chat`: the instruction, then a blank line and the input when
    there is one (a chat model needs no "### Response:" scaffolding)."""
    if parts.instance_input != "":
        return f"{parts.definition}\n\n{parts.instance_input}"
    return parts.definition


def examples_shown(prompt_format: str, num_pos_examples: int) -> int:
    """Positive examples a prompt shows: `num_pos_examples` in the Tk-Instruct formats, none in
    the Alpaca ones (they have no place for demonstrations, so only the instruction is
    perturbed)."""
    return 0 if prompt_format in (ALPACA, ALPACA_CHAT) else num_pos_examples


def is_chat_format(prompt_format: str) -> bool:
    """True for the formats rendered inside a chat template."""
    return prompt_format in CHAT_FORMATS


def check_prompt_format(prompt_format: str, allow_auto: bool = False) -> str:
    """Returns `prompt_format` when it is known (`AUTO` too when `allow_auto`).

    Raises:
      ValueError: an unknown name (the known ones are listed).
    """
    known = PROMPT_FORMATS + ((AUTO,) if allow_auto else ())
    if prompt_format not in known:
        raise ValueError(f"prompt_format must be one of {known}, got {prompt_format!r}")
    return prompt_format


def default_prompt_format(task_source: str, decoder_only: bool, has_chat: bool) -> str:
    """The prompt format used when none is chosen.

    Args:
      task_source: the task's `source` ("niv2" or "self_instruct").
      decoder_only: the model is decoder-only (LLaMA-style).
      has_chat: its vocabulary carries a chat template.

    Returns:
      Encoder-decoder: tk_instruct. Decoder-only: NIV2 tasks tk_instruct, Self-Instruct items
      alpaca; the `_chat` variant when the vocabulary has a chat template.
    """
    if not decoder_only:
        return TK_INSTRUCT
    base = ALPACA if task_source == "self_instruct" else TK_INSTRUCT
    return base + "_chat" if has_chat else base


def resolve_prompt_format(prompt_format: str, task_source: str, decoder_only: bool,
                          has_chat: bool) -> str:
    """`prompt_format`, or `default_prompt_format(...)` when it is `AUTO`.

    Raises:
      ValueError: an unknown format, or a chat format without a chat template.
    """
    check_prompt_format(prompt_format, allow_auto=True)
    if prompt_format == AUTO:
        return default_prompt_format(task_source, decoder_only, has_chat)
    if is_chat_format(prompt_format) and not has_chat:
        raise ValueError(f"prompt_format {prompt_format!r} needs a vocabulary with a chat "
                         "template (a Hugging Face tokenizer that has one)")
    return prompt_format


def render(parts: PromptParts, prompt_format: str = TK_INSTRUCT, fits: Fits | None = None,
           chat: "ChatTemplate | None" = None) -> str:
    """Renders `parts` in `prompt_format`.

    Args:
      parts: the prompt parts.
      prompt_format: one of `PROMPT_FORMATS`.
      fits: length test of the whole rendered prompt, for the Tk-Instruct examples (ignored
        by the Alpaca formats); in a chat format it is applied to the chat-wrapped text.
      chat: the model's chat template (required by the chat formats).

    Returns:
      The prompt text (chat formats: with the template's markup).

    Raises:
      ValueError: an unknown format, or a chat format without `chat`.
    """
    check_prompt_format(prompt_format)
    if is_chat_format(prompt_format):
        if chat is None:
            raise ValueError(f"prompt_format {prompt_format!r} needs the model's chat template")
        if prompt_format == ALPACA_CHAT:
            return chat.user_prompt(alpaca_user_message(parts))
        inner_fits = None if fits is None else (lambda text: fits(chat.user_prompt(text)))
        return chat.user_prompt(render_tk_instruct(parts, inner_fits))
    if prompt_format == TK_INSTRUCT:
        return render_tk_instruct(parts, fits)
    return render_alpaca(parts)


def make_fits(vocabulary: "seqio.Vocabulary", max_length: int = MAX_SOURCE_LENGTH,
              add_eos: bool = True) -> Fits:
    """A `fits` test from a seqio vocabulary: the encoded text (+ EOS) has <= max_length ids.

    The Hugging Face T5 tokenizer that Tk-Instruct counts with appends EOS, so by default one
    id is reserved for it.

    Args:
      vocabulary: any seqio Vocabulary (e.g. from `vocab.get_vocabulary`).
      max_length: max_source_length in tokens.
      add_eos: count one extra id for the EOS the model input will carry.

    Returns:
      fits(text) -> bool.
    """
    budget = max_length - (1 if add_eos else 0)

    def fits(text: str) -> bool:
        # Cheap shortcut: SentencePiece emits at most one piece per UTF-8 byte (byte fallback
        # is the worst case) plus the dummy-prefix piece, so such a short text always fits.
        if len(text.encode("utf-8")) + 1 <= budget:
            return True
        return len(vocabulary.encode(text)) <= budget

    return fits


# Rendered once in every format a run uses before it writes anything (`check_formats_render`).
_PROBE = PromptParts(definition="Repeat the input", example_inputs=("a",),
                     example_outputs=("a",), instance_input="b")
TASK_SOURCES = ("niv2", "self_instruct")


def check_formats_render(prompt_format: str, decoder_only: bool, chat: "ChatTemplate | None",
                         sources: tuple[str, ...] = TASK_SOURCES) -> dict[str, str]:
    """Resolves the prompt format of each task source and renders a probe prompt in each.

    Every command that renders prompts (score, train, evaluate, run) calls this before it
    touches its output directory: a chat template that fails, or goes past its budget
    (`data.bounded_jinja`), then stops the command with nothing on disk, so the same command
    runs once the template is fixed.

    Args:
      prompt_format: `AUTO` or one of `PROMPT_FORMATS` (a run's setting).
      decoder_only: the model is decoder-only.
      chat: the vocabulary's chat template (`chat.from_vocabulary`), or None.
      sources: the task sources whose formats are checked.

    Returns:
      {task source: prompt format}.

    Raises:
      UsageError: an unknown format, or a chat format without a chat template.
      VocabularyError: the chat template fails to render (the file and the reason named).
    """
    from activeit_jax.core.errors import UsageError
    try:
        formats = {source: resolve_prompt_format(prompt_format, source, decoder_only,
                                                 chat is not None) for source in sources}
    except ValueError as err:
        raise UsageError(f"prompt_format: {err}") from None
    for used in sorted(set(formats.values())):
        render(_PROBE, used, None, chat)
    return formats
