"""Chat prompts on the real SmolLM2 tokenizer, against transformers' own tokenizer read from the
same GGUF file:

- our chat rendering (`data.chat`) equals `apply_chat_template(..., add_generation_prompt=True)`
  for Tk-Instruct and Alpaca user turns, for conversations, and for a template that uses the
  jinja features transformers provides (tojson, raise_exception, loop controls, namespaces,
  special-token variables), and our token ids equal transformers';
- a decoder-only training example of a chat format: prompt + answer + end-of-turn equal the
  transformers tokenisation of the whole conversation, and the loss weights cover exactly the
  answer tokens and `<|im_end|>`;
- the scorer's saved source text (chat markup included) re-tokenises to the ids it scored,
  and its perturbed prompts differ from the original only inside the user turn.

No model weights are needed (the vocabulary is read from the GGUF metadata).
"""
from __future__ import annotations

import dataclasses
import glob

import numpy as np
import pytest

from activeit_jax import scoring
from activeit_jax.data import chat as chat_lib, niv2, prompts, self_instruct
from activeit_jax.data.niv2 import Instance
from activeit_jax.models import DecoderOnlyBatches, SpecialIds
from activeit_jax.training import inputs as train_data

pytest.importorskip("transformers")

SMOLLM2_IDS = SpecialIds(pad=0, eos=2, bos=None, end_of_turn=2)


@pytest.fixture(scope="module")
def chat(smollm2_vocab):
    return chat_lib.from_vocabulary(smollm2_vocab)


@pytest.fixture(scope="module")
def niv2_tasks(sample_data):
    paths = sorted(glob.glob(str(sample_data / "niv2" / "tasks" / "*.json")))
    return [niv2.load_niv2_task(p) for p in paths[:4]]


@pytest.fixture(scope="module")
def alpaca_tasks(sample_data):
    items = self_instruct.load_self_instruct(
        sample_data / "self_instruct" / "alpaca_sample.json", max_items=3)
    # The sample's items all have an input; one without exercises the other user turn.
    no_input = dataclasses.replace(items[0], name="no_input", definition="Name three colors.",
                                   instances=(Instance("no_input-0", "", ("red",)),))
    return items + [no_input]


def _hf_chat(tokenizer, messages, **kw):
    return tokenizer.apply_chat_template(messages, tokenize=False, **kw)


def _hf_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_smollm2_vocabulary_has_chatml_and_no_bos(smollm2_vocab, chat):
    assert smollm2_vocab.add_bos is False
    assert smollm2_vocab.end_of_turn_id == smollm2_vocab.eos_id == 2
    assert chat is not None and "<|im_start|>" in chat.template
    assert prompts.default_prompt_format("niv2", True, True) == prompts.TK_INSTRUCT_CHAT
    assert prompts.default_prompt_format("self_instruct", True, True) == prompts.ALPACA_CHAT
    assert prompts.default_prompt_format("niv2", False, True) == prompts.TK_INSTRUCT
    assert prompts.default_prompt_format("self_instruct", True, False) == prompts.ALPACA


def test_tk_instruct_chat_equals_transformers(chat, smollm2_vocab, smollm2_hf_tokenizer,
                                             niv2_tasks):
    for task in niv2_tasks:
        for instance in task.instances[:2]:
            parts = prompts.tk_instruct_parts(task, instance)
            ours = prompts.render(parts, prompts.TK_INSTRUCT_CHAT, chat=chat)
            inner = prompts.render_tk_instruct(parts)
            reference = _hf_chat(smollm2_hf_tokenizer, [{"role": "user", "content": inner}],
                                 add_generation_prompt=True)
            assert ours == reference
            # SmolLM2's template adds its default system turn; the answer follows the header.
            assert ours.startswith("<|im_start|>system\nYou are a helpful AI assistant")
            assert ours.endswith(inner + "<|im_end|>\n<|im_start|>assistant\n")
            assert smollm2_vocab.encode(ours) == _hf_ids(smollm2_hf_tokenizer, reference)


def test_alpaca_chat_equals_transformers(chat, smollm2_vocab, smollm2_hf_tokenizer,
                                         alpaca_tasks):
    assert len(alpaca_tasks) == 4
    for task in alpaca_tasks:
        parts = prompts.tk_instruct_parts(task, task.instances[0], 0)
        ours = prompts.render(parts, prompts.ALPACA_CHAT, chat=chat)
        content = (f"{task.definition}\n\n{task.instances[0].input}"
                   if task.instances[0].input else task.definition)
        reference = _hf_chat(smollm2_hf_tokenizer, [{"role": "user", "content": content}],
                             add_generation_prompt=True)
        assert ours == reference
        assert smollm2_vocab.encode(ours) == _hf_ids(smollm2_hf_tokenizer, reference)


def test_conversations_and_template_features_equal_transformers(chat, smollm2_hf_tokenizer):
    conversation = [{"role": "system", "content": "Answer in one word."},
                    {"role": "user", "content": "Capital of France? é ü 漢字"},
                    {"role": "assistant", "content": "Paris"},
                    {"role": "user", "content": "And of Italy?"}]
    for generation in (True, False):
        assert chat.render(conversation, add_generation_prompt=generation) == _hf_chat(
            smollm2_hf_tokenizer, conversation, add_generation_prompt=generation)
    # A template using what transformers' environment provides, rendered by both.
    template = (
        "{{ bos_token }}{% set ns = namespace(n=0) %}\n"
        "{% for m in messages %}\n"
        "  {% if m['role'] == 'system' %}{% continue %}{% endif %}\n"
        "  {% set ns.n = ns.n + 1 %}\n"
        "  [{{ ns.n }}] {{ m | tojson }}\n"
        "  {% if ns.n > 5 %}{% break %}{% endif %}\n"
        "{% endfor %}\n"
        "{% if messages | length == 0 %}{{ raise_exception('empty') }}{% endif %}\n"
        "{% if add_generation_prompt %}{{ eos_token }}<go>{% endif %}")
    ours = chat_lib.ChatTemplate(template, chat.special_tokens)
    assert chat.special_tokens == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                   "unk_token": "<|endoftext|>"}
    assert ours.render(conversation) == _hf_chat(
        smollm2_hf_tokenizer, conversation, chat_template=template, add_generation_prompt=True)
    with pytest.raises(Exception, match="empty"):
        ours.render([])


def test_chat_formats_need_a_template(niv2_tasks):
    parts = prompts.tk_instruct_parts(niv2_tasks[0], niv2_tasks[0].instances[0])
    with pytest.raises(ValueError, match="chat template"):
        prompts.render(parts, prompts.TK_INSTRUCT_CHAT)
    with pytest.raises(ValueError, match="chat template"):
        prompts.resolve_prompt_format(prompts.ALPACA_CHAT, "niv2", True, has_chat=False)
    with pytest.raises(ValueError, match="prompt_format must be one of"):
        prompts.resolve_prompt_format("chatml", "niv2", True, has_chat=True)


@pytest.mark.parametrize("source", ["niv2", "self_instruct"])
def test_training_example_weights_cover_answer_and_end_of_turn(
        smollm2_vocab, smollm2_hf_tokenizer, niv2_tasks, alpaca_tasks, source):
    tasks = niv2_tasks[:2] if source == "niv2" else alpaca_tasks
    examples = train_data.encode_tasks(
        tasks, smollm2_vocab, max_instances_per_task=2, num_pos_examples=2,
        max_source_length=1024, max_target_length=64, seed=0,
        builder=DecoderOnlyBatches(SMOLLM2_IDS))
    by_id = {i.id: (t, i) for t in tasks for i in t.instances}
    for ex in examples:
        task, instance = by_id[ex.instance_id]
        answer = ex.references[0]
        fmt = prompts.TK_INSTRUCT_CHAT if source == "niv2" else prompts.ALPACA_CHAT
        shots = 2 if source == "niv2" else 0
        user = prompts.render(prompts.tk_instruct_parts(task, instance, shots), fmt,
                              chat=chat_lib.from_vocabulary(smollm2_vocab))
        inner = user.split("<|im_start|>user\n", 1)[1].rsplit("<|im_end|>", 1)[0]
        # The whole conversation as transformers renders and tokenises it: the training
        # sequence is that, without the template's final newline.
        conversation = _hf_chat(smollm2_hf_tokenizer, [
            {"role": "user", "content": inner}, {"role": "assistant", "content": answer}])
        expected = _hf_ids(smollm2_hf_tokenizer, conversation)
        assert conversation.endswith(answer + "<|im_end|>\n")
        feats = DecoderOnlyBatches(SMOLLM2_IDS).train_batch([ex.inputs], [ex.targets[0]], 1024,
                                                            64)
        weights = feats["decoder_loss_weights"][0]
        n = int((feats["decoder_target_tokens"][0] != 0).sum())
        sequence = [int(feats["decoder_input_tokens"][0, 0])] + \
            feats["decoder_target_tokens"][0, :n].tolist()
        assert sequence == expected[:-1]  # no BOS: the sequence starts with <|im_start|>
        answer_ids = _hf_ids(smollm2_hf_tokenizer, answer)
        scored = feats["decoder_target_tokens"][0][weights > 0].tolist()
        assert scored == answer_ids + [2]  # the answer, then <|im_end|>
        assert weights.sum() == len(answer_ids) + 1
        assert np.all(np.flatnonzero(weights) == np.arange(n - len(scored), n))


def test_scorer_sources_retokenise_to_scored_ids(smollm2_vocab, smollm2_hf_tokenizer,
                                                 niv2_tasks):
    config = scoring.ScoreConfig(num_instances=2, num_perturbations=3, max_source_length=2048,
                                 max_target_length=16, save_prompts=True)
    builder = scoring.PromptBuilder(smollm2_vocab, config, decoder_only=True, eos_id=2)
    assert builder.formats == {"niv2": "tk_instruct_chat", "self_instruct": "alpaca_chat"}
    for index, task in enumerate(niv2_tasks[:2]):
        plan = builder.plan(index, task)
        assert len(plan.sources) == 2 and all(len(s) == 4 for s in plan.sources)
        for texts, ids in zip(plan.sources, plan.source_ids):
            head = texts[0].split("<|im_start|>user\n", 1)[0]
            tail = "Output: <|im_end|>\n<|im_start|>assistant\n"
            for text, row in zip(texts, ids):
                assert _hf_ids(smollm2_hf_tokenizer, text) == row
                # Perturbations change the user turn only (definition, example inputs).
                assert text.startswith(head + "<|im_start|>user\nDefinition: ")
                assert text.endswith(tail)
            assert len(set(texts)) > 1
