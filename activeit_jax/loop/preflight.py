"""What `activeit-jax run` checks before it writes anything to its run directory.

The run writes `loop_config.json` and each seed's prepared split before its first training,
and scores the pool hours later. A setting that can only fail then -- a chat template that
does not render, a run directory that is one of the run's inputs -- is checked here, at the
start, so that a refused command leaves nothing behind and the corrected one runs.
(Settings of one config alone are checked when that config is built: `LoopConfig`,
`ScoreConfig`, `TrainConfig`.)
"""
from __future__ import annotations

from typing import Any

from activeit_jax.core.errors import UsageError
from activeit_jax.core.paths import same_path


def check_experiment(exp: Any, out_dir: str) -> None:
    """Checks a resolved experiment (`commands.run.Experiment`) against its run directory.

    Args:
      exp: the experiment.
      out_dir: the run directory (`--out`).

    Raises:
      UsageError: the run directory is one of the experiment's inputs, or a prompt format
        cannot be used (a chat format without a chat template).
      VocabularyError: the chat template does not render (its file named).
    """
    _check_inputs_are_not_the_run_dir(exp, out_dir)
    check_prompt_formats(exp)


def check_prompt_formats(exp: Any) -> None:
    """Renders every prompt format the run's training, evaluation and scoring use, once."""
    from activeit_jax.training import inputs as train_data
    for prompt_format in (exp.train_config.prompt_format, exp.score_config.prompt_format):
        train_data.check_prompts_render(exp.model.decoder_only, exp.vocabulary, prompt_format)


def _check_inputs_are_not_the_run_dir(exp: Any, out_dir: str) -> None:
    inputs = {"experiment.niv2_dir": exp.niv2_dir,
              "experiment.init_checkpoint": exp.init_checkpoint,
              "experiment.self_instruct_file": exp.self_instruct_file,
              "experiment.self_instruct_test_file": exp.self_instruct_test_file}
    for name, path in inputs.items():
        if path and same_path(out_dir, path):
            raise UsageError(f"--out={out_dir} is the input {name} ({path}): the run would "
                             f"write its seeds and iterations into it; choose another --out")
