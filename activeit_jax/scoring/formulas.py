"""The per-task numbers of the paper from per-row log-probability sums (pure numpy).

See the package docstring for the definitions (Kung et al., 2023).
"""
from __future__ import annotations

import numpy as np


def sequence_probability(log_prob_sum: np.ndarray, num_tokens: np.ndarray) -> np.ndarray:
    """exp(mean token log-probability) of each sequence.

    Args:
      log_prob_sum: [...] summed target-token log-probabilities.
      num_tokens: [...] number of target tokens (>= 1; EOS counts).

    Returns:
      [...] float64 probabilities in [0, 1].
    """
    return np.exp(np.asarray(log_prob_sum, np.float64) / np.asarray(num_tokens, np.float64))


def prompt_uncertainty(p: np.ndarray) -> float:
    """Mean over instances and perturbations of |p_k(x) - p_0(x)|.

    Args:
      p: [n, 1 + K]; column 0 holds p_0 (unperturbed prompt), columns 1..K the perturbations.

    Returns:
      The task's prompt uncertainty (0.0 when K == 0).
    """
    p = np.asarray(p, np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"p must be [n>0, 1+K], got {p.shape}")
    if p.shape[1] == 1:
        return 0.0
    return float(np.mean(np.abs(p[:, 1:] - p[:, :1])))


def prediction_probability(p: np.ndarray) -> float:
    """Mean over instances of p_0(x). `p` as in `prompt_uncertainty`."""
    return float(np.mean(np.asarray(p, np.float64)[:, 0]))


def mean_perplexity(log_prob_sum0: np.ndarray, num_tokens0: np.ndarray) -> float:
    """Mean over instances of exp(mean token NLL) of the original prediction.

    Args:
      log_prob_sum0: [n] summed log-probabilities under the unperturbed prompt.
      num_tokens0: [n] target token counts.
    """
    nll = -np.asarray(log_prob_sum0, np.float64) / np.asarray(num_tokens0, np.float64)
    return float(np.mean(np.exp(nll)))


def task_metrics(log_prob_sum: np.ndarray, num_tokens: np.ndarray,
                 entropy_sum: np.ndarray | None = None) -> dict[str, float | None]:
    """All per-task numbers from the per-row sums.

    Args:
      log_prob_sum: [n, 1 + K] summed target log-probabilities (column 0 = unperturbed).
      num_tokens: [n, 1 + K] target token counts (equal along a row: same target).
      entropy_sum: [n] summed next-token entropies under prompt 0, or None.

    Returns:
      {prompt_uncertainty, prediction_probability, perplexity, entropy}.
    """
    p = sequence_probability(log_prob_sum, num_tokens)
    entropy = None
    if entropy_sum is not None:
        entropy = float(np.mean(np.asarray(entropy_sum, np.float64)
                                / np.asarray(num_tokens, np.float64)[:, 0]))
    return {
        "prompt_uncertainty": prompt_uncertainty(p),
        "prediction_probability": prediction_probability(p),
        "perplexity": mean_perplexity(log_prob_sum[:, 0], num_tokens[:, 0]),
        "entropy": entropy,
    }
