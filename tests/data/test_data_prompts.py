"""Prompt strings: Tk-Instruct (exact, hand-written expectations) and Stanford Alpaca."""
from activeit_jax.data import niv2, prompts
from activeit_jax.data.niv2 import Example, Instance, Task

# Written by hand from Tk-Instruct's DataCollatorForNI (definition + 2 positive examples, no
# negative examples, no explanation). Note the leading spaces of " Positive Example" and
# " Output:", and the periods added after inputs/outputs that lack final punctuation.
EXPECTED_TASK092 = (
    "Definition: In this task, you need to output 'Yes' if the given number is a prime number "
    "otherwise output 'No'. A 'prime number' is a a whole number above 1 that can not be made "
    "by multiplying other whole numbers.\n"
    "\n"
    " Positive Example 1 -\n"
    "Input: 7.\n"
    " Output: Yes.\n"
    "\n"
    " Positive Example 2 -\n"
    "Input: 12.\n"
    " Output: No.\n"
    "\n"
    "Now complete the following example -\n"
    "Input: 95736.\n"
    "Output: "
)


def _task092(sample_data):
    return niv2.load_niv2_task(
        sample_data / "niv2" / "tasks" / "task092_check_prime_classification.json")


def test_tk_instruct_exact_string_for_a_real_task(sample_data):
    task = _task092(sample_data)
    parts = prompts.tk_instruct_parts(task, task.instances[0])
    assert parts.example_inputs == ("7", "12") and parts.instance_input == "95736"
    assert prompts.render_tk_instruct(parts) == EXPECTED_TASK092
    assert prompts.render_tk_instruct(parts, fits=lambda s: True) == EXPECTED_TASK092


def test_tk_instruct_punctuation_strip_and_example_count():
    task = Task(name="t", definition="  Say it!  ",
                positive_examples=(Example(" a? ", "b.", "why"), Example("c", "d"),
                                   Example("e", "f")),
                negative_examples=(Example("x", "y"),),
                instances=(Instance("t-1", "  q:\n", ("r",)),))
    text = prompts.render_tk_instruct(prompts.tk_instruct_parts(task, task.instances[0]))
    assert text == ("Definition: Say it!\n\n"
                    " Positive Example 1 -\nInput: a?\n Output: b.\n\n"
                    " Positive Example 2 -\nInput: c.\n Output: d.\n\n"
                    "Now complete the following example -\nInput: q:\nOutput: ")
    none = prompts.tk_instruct_parts(task, task.instances[0], num_pos_examples=0)
    assert "Positive Example" not in prompts.render_tk_instruct(none)


def test_examples_added_only_while_they_fit(sample_data):
    task = _task092(sample_data)
    parts = prompts.tk_instruct_parts(task, task.instances[0])
    zero = prompts.render_tk_instruct(parts.replace(example_inputs=(), example_outputs=()))
    one_example_len = len(zero) + len(" Positive Example 1 -\nInput: 7.\n Output: Yes.\n\n")
    seen = []

    def fits(text):  # a character budget stands in for a token budget
        seen.append(text)
        return len(text) <= one_example_len

    text = prompts.render_tk_instruct(parts, fits)
    assert "Positive Example 1" in text and "Positive Example 2" not in text
    assert len(seen) == 2  # stops at the first example that does not fit
    assert seen[1] == EXPECTED_TASK092  # the collator's test string for example 2
    assert prompts.render_tk_instruct(parts, lambda s: False) == zero


def test_perturbed_parts_rerender_with_the_same_function(sample_data):
    task = _task092(sample_data)
    parts = prompts.tk_instruct_parts(task, task.instances[0])
    perturbed = parts.replace(definition="output Yes if prime", example_inputs=("7", "1 2"))
    text = prompts.render_tk_instruct(perturbed)
    assert text.startswith("Definition: output Yes if prime.\n\n")
    assert "Input: 1 2.\n Output: No.\n" in text
    assert text.endswith("Input: 95736.\nOutput: ")


def test_make_fits_counts_tokens_plus_eos():
    class FakeVocab:  # one token per whitespace word
        def encode(self, text):
            return text.split()

    fits = prompts.make_fits(FakeVocab(), max_length=4)
    assert fits("a b")  # short: no encode needed
    assert fits("aaaa bbbb cccc")  # 3 tokens + EOS = 4
    assert not fits("aaaa bbbb cccc dddd")
    assert prompts.make_fits(FakeVocab(), 4, add_eos=False)("aaaa bbbb cccc dddd")


def test_alpaca_templates():
    assert prompts.alpaca_prompt("Add the numbers.", "2, 3") == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2, 3\n\n### Response:")
    assert prompts.alpaca_prompt("Tell a joke.") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nTell a joke.\n\n### Response:")
    assert prompts.alpaca_prompt("Tell a joke.", "") == prompts.alpaca_prompt("Tell a joke.")
    parts = prompts.PromptParts("Add the numbers.", (), (), "2, 3")
    assert prompts.render(parts, "alpaca") == prompts.alpaca_prompt("Add the numbers.", "2, 3")
