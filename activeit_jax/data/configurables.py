"""gin registrations of the data layer, for config files (config enters at the edges).

A gin file that needs a vocabulary writes

    import activeit_jax.data.configurables
    get_vocabulary.path = "data/sample/vocab/sample_spm.model"
    VOCABULARY = @get_vocabulary()

The path may be a SentencePiece `.model`, a Hugging Face `tokenizer.json` or a tokenizer
directory (`vocab.load_vocabulary`). Left unset (`%gin.REQUIRED` or None), VOCABULARY is None
and the commands use the tokenizer stored with the checkpoint they start from
(`vocab.resolve_vocabulary`), failing with one clear line when it has none.

Library functions never read gin; only this module registers them.
"""
from __future__ import annotations

import os

import gin

from activeit_jax.core import resources
from activeit_jax.data import vocab as vocab_lib

# The directory that holds `data/sample/` (a checkout, or the installed package).
REPO_ROOT = resources.RESOURCE_ROOT

# A relative path that does not exist from the working directory is tried from REPO_ROOT, so
# configs can name bundled files ("data/sample/...") from anywhere.
resolve_repo_path = resources.resolve_path


@gin.configurable("get_vocabulary", module="activeit_jax.data")
def get_vocabulary(path: str = gin.REQUIRED, extra_ids: int = vocab_lib.DEFAULT_EXTRA_IDS,
                   require_t5_ids: bool = True):
    """gin face of `vocab.load_vocabulary` (same arguments; repo-relative paths resolved).

    Returns:
      A seqio vocabulary (SentencePiece or Hugging Face tokenizers), or None when the path is
      not set (a `%gin.REQUIRED` macro arrives here as gin's sentinel): the commands then fall
      back to the checkpoint's stored tokenizer.

    Raises:
      VocabularyError: nothing loadable at the path (or, for SentencePiece with
        require_t5_ids, not T5's ids).
    """
    if path is gin.REQUIRED or path is None:
        return None
    return vocab_lib.load_vocabulary(resolve_repo_path(path), extra_ids, require_t5_ids)


@gin.configurable("sample_vocabulary", module="activeit_jax.data")
def sample_vocabulary(extra_ids: int = vocab_lib.DEFAULT_EXTRA_IDS):
    """The bundled test/demo vocabulary (1000 pieces + `extra_ids` sentinels)."""
    return vocab_lib.get_vocabulary(os.path.join(REPO_ROOT, vocab_lib.SAMPLE_VOCAB_RELPATH),
                                    extra_ids)
