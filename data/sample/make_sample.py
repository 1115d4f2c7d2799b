"""Rebuilds the bundled sample in data/sample/ from the real data in ../shared/data.

    .venv/bin/python data/sample/make_sample.py [--shared=../shared/data] [--out=data/sample]

What it does (deterministic: same inputs, same files):
  1. NIV2: copies 40 task files (the 22 non-MMMLU train tasks of the shared subset as it was
     first assembled, listed in TRAIN_TASKS so that a grown shared folder gives the same
     sample; the 6 smallest MMMLU train tasks; and 12 test tasks with permissive instance
     licenses, mixing classification and generation), each cut to its first 50 instances;
     every other field is kept as is (including the `"URL": [NaN]` of some originals). The
     three official split files are copied unchanged.
  2. Self-Instruct / Alpaca: the first 300 items of alpaca_plus_validation_seen.json (with the
     Alpaca DATA_LICENSE, CC BY-NC 4.0) and the 252 user-oriented instructions (with the
     Self-Instruct LICENSE, Apache-2.0; evaluation only).
  3. Vocabulary: trains vocab/sample_spm.model (1000 pieces, T5 ids pad 0 / eos 1 / unk 2, no
     bos; see activeit_jax.data.vocab.train_sentencepiece) on, in this order: the Tk-Instruct
     prompt and every reference output of every instance of the 40 NIV2 tasks (sorted by
     name), then the Alpaca prompt and output of the 300 Alpaca items and of the 252
     user-oriented instructions.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from activeit_jax.data import niv2, prompts, self_instruct, vocab  # noqa: E402

MAX_INSTANCES = 50
NUM_ALPACA = 300
VOCAB_SIZE = 1000

# The non-MMMLU train tasks of the shared subset when the sample was first made (79 train
# files then; the folder has grown since, and the sample stays as it was).
TRAIN_TASKS = [
    "task063_first_i_elements", "task073_commonsenseqa_answer_generation",
    "task080_piqa_answer_generation", "task085_unnatural_addsub_arithmetic",
    "task092_check_prime_classification", "task113_count_frequency_of_letter",
    "task1146_country_capital", "task1289_trec_classification", "task1331_reverse_array",
    "task1332_check_leap_year", "task1508_wordnet_antonyms",
    "task1564_triviaqa_answer_generation", "task1582_bless_hypernym_generation",
    "task177_para-nmt_paraphrasing", "task195_sentiment140_classification",
    "task228_arc_answer_generation_easy", "task363_sst2_polarity_classification",
    "task376_reverse_order_of_words", "task379_agnews_topic_classification",
    "task400_paws_paraphrase_classification", "task616_cola_classification",
    "task833_poem_sentiment_classification",
]
# The 6 smallest MMMLU train task files of the shared subset (all MIT instance license).
MMMLU_TASKS = [
    "task664_mmmlu_answer_generation_abstract_algebra",
    "task693_mmmlu_answer_generation_conceptual_physics",
    "task695_mmmlu_answer_generation_electrical_engineering",
    "task698_mmmlu_answer_generation_global_facts",
    "task722_mmmlu_answer_generation_random_topic",
    "task737_mmmlu_answer_generation_world_religions",
]
# Test tasks: 7 classification + 5 generation, instance licenses MIT / Apache 2.0 / BSD /
# CC BY(-SA) / Unknown (no non-commercial or terms-of-service data).
TEST_TASKS = [
    "task020_mctaco_span_based_question",
    "task033_winogrande_answer_generation",
    "task102_commongen_sentence_generation",
    "task1155_bard_analogical_reasoning_trash_or_treasure",
    "task133_winowhy_reason_plausibility_detection",
    "task1393_superglue_copa_text_completion",
    "task1409_dart_text_generation",
    "task190_snli_classification",
    "task288_gigaword_summarization",
    "task391_causal_relationship",
    "task640_esnli_classification",
    "task957_e2e_nlg_text_generation_generate",
]


def _write_json(path: str, obj, indent: int | None = 1) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        # allow_nan keeps the bare NaN of the originals ("URL": [NaN]) as it was.
        handle.write(json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=True) + "\n")


def make_niv2(shared: str, out: str) -> list[str]:
    """Copies the chosen NIV2 task files (cut) and the split files; returns the task names."""
    src = os.path.join(shared, "niv2")
    chosen = sorted(TRAIN_TASKS + MMMLU_TASKS + TEST_TASKS)
    missing = [n for n in chosen if not os.path.exists(niv2.task_file_path(src, n))]
    if missing:
        raise SystemExit(f"{src}/tasks lacks {len(missing)} sample task(s): {missing[:5]}")
    tasks_out = os.path.join(out, "niv2", "tasks")
    if os.path.isdir(tasks_out):
        shutil.rmtree(tasks_out)
    for name in chosen:
        with open(niv2.task_file_path(src, name), encoding="utf-8") as handle:
            raw = json.load(handle)
        raw["Instances"] = raw["Instances"][:MAX_INSTANCES]
        _write_json(os.path.join(tasks_out, f"{name}.json"), raw)
    for split in niv2.SPLIT_NAMES:
        dst = niv2.split_file_path(os.path.join(out, "niv2"), split)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(niv2.split_file_path(src, split), dst)
    return chosen


def make_self_instruct(shared: str, out: str) -> None:
    """Copies the Alpaca-format subset and the user-oriented instructions, with licenses."""
    src = os.path.join(shared, "self_instruct")
    dst = os.path.join(out, "self_instruct")
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "alpaca_plus_gisting", "alpaca_plus_validation_seen.json"),
              encoding="utf-8") as handle:
        items = json.load(handle)[:NUM_ALPACA]
    _write_json(os.path.join(dst, "alpaca_sample.json"), items, indent=1)
    shutil.copyfile(os.path.join(src, "alpaca_plus_gisting", "DATA_LICENSE"),
                    os.path.join(dst, "DATA_LICENSE"))
    shutil.copyfile(os.path.join(src, "self_instruct_repo", "user_oriented_instructions.jsonl"),
                    os.path.join(dst, "user_oriented_instructions.jsonl"))
    shutil.copyfile(os.path.join(src, "self_instruct_repo", "LICENSE"),
                    os.path.join(dst, "LICENSE"))


def vocab_texts(out: str, task_names: list[str]) -> list[str]:
    """The vocabulary training texts, in a fixed order (see module docstring)."""
    texts = []
    for name in task_names:
        task = niv2.load_niv2_task(niv2.task_file_path(os.path.join(out, "niv2"), name))
        for instance in task.instances:
            texts.append(prompts.render_tk_instruct(prompts.tk_instruct_parts(task, instance)))
            texts.extend(instance.outputs)
    si_dir = os.path.join(out, "self_instruct")
    for file_name in ("alpaca_sample.json", "user_oriented_instructions.jsonl"):
        for task in self_instruct.load_self_instruct(os.path.join(si_dir, file_name)):
            for instance in task.instances:
                texts.append(prompts.alpaca_prompt(task.definition, instance.input))
                texts.extend(instance.outputs)
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=os.path.join(REPO_ROOT, "..", "shared", "data"))
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "data", "sample"))
    args = parser.parse_args()
    names = make_niv2(args.shared, args.out)
    make_self_instruct(args.shared, args.out)
    model = vocab.train_sentencepiece(vocab_texts(args.out, names),
                                      os.path.join(args.out, "vocab", "sample_spm"),
                                      vocab_size=VOCAB_SIZE)
    print(f"{len(names)} NIV2 tasks, {NUM_ALPACA} Alpaca items, 252 user-oriented "
          f"instructions; vocabulary {model}")


if __name__ == "__main__":
    main()
