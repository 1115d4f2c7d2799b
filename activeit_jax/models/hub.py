"""Hugging Face Hub ids for `convert`: `org/name[@revision]` and `org/name[@revision]:FILE.gguf`.

`resolve_hf_dir` and `resolve_gguf_file` turn a `--from_hf` / `--from_gguf` argument into a
local directory / file. A path that exists is used as it is, always (a local folder named like
a Hub id wins); anything else that reads as a Hub id is fetched with `huggingface_hub`
(`snapshot_download` / `hf_hub_download`) into its cache, so the library's environment decides
everything about the download, as for every other Hugging Face tool:

- `HF_TOKEN` (or a stored `huggingface-cli login`) for private and gated repositories;
- `HF_HOME` / `HF_HUB_CACHE` for where the cache lives (a repository is fetched once, then read
  from the cache);
- `HF_HUB_OFFLINE=1` to read only what the cache holds (no network at all).

Only what a conversion reads is downloaded: `config.json`, the weights `model.safetensors` or
the shards `model-*-of-*.safetensors` with their index (not other `*.safetensors` files such as
Mistral's `consolidated.safetensors`, a second copy of the same weights), the tokenizer files
and the chat template. A repository without safetensors weights is asked once more for Flax
weights (`flax_model.msgpack`, single or sharded); pickled PyTorch weights are never fetched.
An argument that is neither an existing path nor a Hub id, an unknown repository or revision,
or a file missing from the cache when offline, is one line naming it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re

from activeit_jax.models.hf_configs import ConversionError

logger = logging.getLogger(__name__)

CONFIG_PATTERNS = ("config.json",)
SAFETENSORS_PATTERNS = ("model.safetensors", "model-*-of-*.safetensors",
                        "model.safetensors.index.json")
FLAX_PATTERNS = ("flax_model.msgpack", "flax_model-*-of-*.msgpack",
                 "flax_model.msgpack.index.json")
TOKENIZER_PATTERNS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "chat_template.jinja", "chat_template.json")

# A Hub repository id: one namespace and one name of letters, digits, "-", "_", "."
# (huggingface_hub's own rules also forbid "--" and ".." and a leading/trailing "-" or ".").
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}"
_HUB_ID = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[^\s:@]+))?")
_HUB_FILE = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[^\s:@]+))?"
                       r":(?P<filename>[^\s:]+\.gguf)")


@dataclasses.dataclass(frozen=True)
class HubRef:
    """A parsed Hub reference: repository id, revision (None = the default branch) and, for a
    GGUF, the file inside the repository."""
    repo_id: str
    revision: str | None = None
    filename: str | None = None

    def __str__(self) -> str:
        text = self.repo_id + (f"@{self.revision}" if self.revision else "")
        return text + (f":{self.filename}" if self.filename else "")


def _valid_name(repo_id: str) -> bool:
    return not any(bad in repo_id for bad in ("--", "..")) and all(
        not part.startswith(("-", ".")) and not part.endswith(("-", "."))
        for part in repo_id.split("/"))


def parse_hub_id(text: str) -> HubRef | None:
    """`org/name[@revision]` -> HubRef, or None when `text` is not one."""
    match = _HUB_ID.fullmatch(text)
    if not match or not _valid_name(match["repo"]):
        return None
    return HubRef(match["repo"], match["revision"])


def parse_hub_file(text: str) -> HubRef | None:
    """`org/name[@revision]:FILE.gguf` -> HubRef (with `filename`), or None."""
    match = _HUB_FILE.fullmatch(text)
    if not match or not _valid_name(match["repo"]) or ".." in match["filename"].split("/"):
        return None
    return HubRef(match["repo"], match["revision"], match["filename"])


def _is_local_path(text: str) -> bool:
    """Spelled as a path (absolute, ./, ../, ~), so never a Hub id."""
    return text.startswith(("/", "./", "../", "~")) or os.sep != "/" and os.sep in text


def _hub_error(ref: HubRef, err: Exception) -> ConversionError:
    """One line for a failed Hub lookup (huggingface_hub's messages span several lines)."""
    from huggingface_hub import constants, errors

    offline = bool(constants.is_offline_mode() if hasattr(constants, "is_offline_mode")
                   else getattr(constants, "HF_HUB_OFFLINE", False))
    if isinstance(err, errors.GatedRepoError):
        why = "a gated repository: accept its terms on the Hub and set HF_TOKEN"
    elif isinstance(err, errors.RepositoryNotFoundError):
        why = "no such repository on the Hugging Face Hub (or a private one: set HF_TOKEN)"
    elif isinstance(err, errors.RevisionNotFoundError):
        why = f"no revision {ref.revision!r} in this repository"
    elif isinstance(err, errors.LocalEntryNotFoundError):
        why = ("not in the Hugging Face cache and HF_HUB_OFFLINE is set (unset it, or fetch "
               "it once with network access)" if offline else
               "not in the Hugging Face cache and the Hub cannot be reached")
    elif isinstance(err, errors.EntryNotFoundError):
        why = f"no file {ref.filename!r} in this repository"
    else:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        why = f"{type(err).__name__}: {first}"
    return ConversionError(f"{ref}: {why}")


def _snapshot(ref: HubRef, patterns: tuple[str, ...]) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=list(patterns))


def _has_any(directory: str, names: tuple[str, ...]) -> bool:
    return any(os.path.exists(os.path.join(directory, name)) for name in names)


def resolve_hf_dir(source: str | os.PathLike) -> str:
    """A local Hugging Face model directory for `--from_hf`.

    Args:
      source: a directory (used as it is when it exists) or a Hub id `org/name[@revision]`
        (revision: a branch, tag or commit; default the repository's default branch).

    Returns:
      The directory: `source` itself, or the cached snapshot of the Hub repository holding
      its config, weights (safetensors, else Flax msgpack) and tokenizer files.

    Raises:
      ConversionError: one line: neither a directory nor a Hub id, or the Hub lookup failed.
    """
    text = os.fspath(source)
    if os.path.exists(text):
        return text
    ref = None if _is_local_path(text) else parse_hub_id(text)
    if ref is None:
        raise ConversionError(f"Hugging Face directory {text} does not exist, and it is not a "
                              "Hub id (org/name or org/name@revision)")
    logger.info("%s: fetching config, weights and tokenizer from the Hugging Face Hub "
                "(or its cache)", ref)
    try:
        directory = _snapshot(ref, CONFIG_PATTERNS + SAFETENSORS_PATTERNS + TOKENIZER_PATTERNS)
        if not _has_any(directory, ("model.safetensors", "model.safetensors.index.json")):
            directory = _snapshot(ref, FLAX_PATTERNS)
    except Exception as err:  # noqa: BLE001  huggingface_hub raises many kinds; all one line
        raise _hub_error(ref, err) from None
    logger.info("%s: using %s", ref, directory)
    return directory


def resolve_gguf_file(source: str | os.PathLike) -> str:
    """A local GGUF file for `--from_gguf`.

    Args:
      source: a file (used as it is when it exists) or `org/name[@revision]:FILE.gguf`.

    Returns:
      `source` itself, or the cached copy of FILE.gguf from the Hub repository.

    Raises:
      ConversionError: one line: neither a file nor a Hub file reference, or the lookup
        failed.
    """
    text = os.fspath(source)
    if os.path.exists(text):
        return text
    ref = None if _is_local_path(text) else parse_hub_file(text)
    if ref is None:
        raise ConversionError(f"{text}: GGUF file not found, and not a Hugging Face Hub file "
                              "(org/name:FILE.gguf or org/name@revision:FILE.gguf)")
    from huggingface_hub import hf_hub_download

    logger.info("%s: fetching from the Hugging Face Hub (or its cache)", ref)
    try:
        return hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision)
    except Exception as err:  # noqa: BLE001  as above
        raise _hub_error(ref, err) from None
