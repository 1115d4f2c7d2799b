"""gin registrations of the data layer, for config files (config enters at the edges).

A gin file that needs a vocabulary writes

    import activeit_jax.data.configurables
    get_vocabulary.path = "data/sample/vocab/sample_spm.model"
    VOCABULARY = @get_vocabulary()

Library functions never read gin; only this module registers them.
"""
from __future__ import annotations

import os

import gin

from activeit_jax.data import vocab as vocab_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resolve_repo_path(path: str) -> str:
    """A relative path that does not exist from the working directory is tried from the
    repository root, so configs can name bundled files ("data/sample/...") from anywhere."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    candidate = os.path.join(REPO_ROOT, path)
    return candidate if os.path.exists(candidate) else path


@gin.configurable("get_vocabulary", module="activeit_jax.data")
def get_vocabulary(path: str = gin.REQUIRED, extra_ids: int = vocab_lib.DEFAULT_EXTRA_IDS,
                   require_t5_ids: bool = True):
    """gin face of `vocab.get_vocabulary` (same arguments; repo-relative paths resolved).

    Returns:
      seqio.SentencePieceVocabulary.

    Raises:
      VocabularyError: the path is missing or not a T5-id SentencePiece model.
    """
    if path is gin.REQUIRED:  # a `%gin.REQUIRED` macro arrives here as gin's sentinel
        raise ValueError("the vocabulary path is not set: bind get_vocabulary.path, e.g. "
                         "--gin.get_vocabulary.path='\"/models/t5/spiece.model\"'")
    return vocab_lib.get_vocabulary(resolve_repo_path(path), extra_ids, require_t5_ids)


@gin.configurable("sample_vocabulary", module="activeit_jax.data")
def sample_vocabulary(extra_ids: int = vocab_lib.DEFAULT_EXTRA_IDS):
    """The bundled test/demo vocabulary (1000 pieces + `extra_ids` sentinels)."""
    return vocab_lib.get_vocabulary(os.path.join(REPO_ROOT, vocab_lib.SAMPLE_VOCAB_RELPATH),
                                    extra_ids)
