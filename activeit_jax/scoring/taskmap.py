"""The Task Map: prediction probability (y) against prompt uncertainty (x), one dot per task.

Categories (Kung et al., 2023, Fig. 1):

- **Ambiguous**: prompt uncertainty above the PU threshold (the model's answer moves when the
  instruction is perturbed).
- **Easy**: PU at or below the threshold and prediction probability at or above the
  probability threshold.
- **Difficult**: PU at or below the threshold and prediction probability below it.

Thresholds (`TaskMapThresholds`), configurable:

- ``pu_quantile`` (default 2/3): the PU threshold is this quantile of the pool's PU, so about
  the top third of the pool is Ambiguous. ``pu_threshold`` (absolute value) overrides it.
- ``probability_quantile`` (default 0.5): the probability threshold is this quantile (the
  median by default) of the prediction probability of the *non-ambiguous* tasks, so the rest
  of the pool splits evenly into Easy and Difficult. ``probability_threshold`` overrides it.

Quantiles use numpy's default (linear) interpolation. Ties go to the lower category
(PU == threshold is not Ambiguous; probability == threshold is Easy).
"""
from __future__ import annotations

import csv
import dataclasses
import io
from typing import Sequence

import numpy as np

from activeit_jax.core import io_utils

AMBIGUOUS = "ambiguous"
EASY = "easy"
DIFFICULT = "difficult"
CATEGORIES = (AMBIGUOUS, EASY, DIFFICULT)
COLORS = {AMBIGUOUS: "#d62728", EASY: "#2ca02c", DIFFICULT: "#1f77b4"}
MARKERS = {"cls": "o", "gen": "^"}
_X_TICKS = (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0)


@dataclasses.dataclass(frozen=True)
class TaskMapThresholds:
    """How tasks are split into categories (see the module docstring)."""
    pu_quantile: float = 2.0 / 3.0
    probability_quantile: float = 0.5
    pu_threshold: float | None = None
    probability_threshold: float | None = None

    def __post_init__(self):
        for name in ("pu_quantile", "probability_quantile"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


def resolve_thresholds(prompt_uncertainty: Sequence[float],
                       prediction_probability: Sequence[float],
                       thresholds: TaskMapThresholds = TaskMapThresholds()
                       ) -> tuple[float, float]:
    """The absolute (PU threshold, probability threshold) for a pool.

    Args:
      prompt_uncertainty: [N] PU of each task.
      prediction_probability: [N] prediction probability of each task.
      thresholds: quantiles / absolute overrides.

    Returns:
      (pu_threshold, probability_threshold); NaN when the pool is empty.
    """
    pu = np.asarray(prompt_uncertainty, dtype=np.float64)
    prob = np.asarray(prediction_probability, dtype=np.float64)
    if pu.shape != prob.shape or pu.ndim != 1:
        raise ValueError(f"need two equal-length vectors, got {pu.shape} and {prob.shape}")
    if thresholds.pu_threshold is not None:
        pu_t = float(thresholds.pu_threshold)
    else:
        pu_t = float(np.quantile(pu, thresholds.pu_quantile)) if pu.size else float("nan")
    if thresholds.probability_threshold is not None:
        prob_t = float(thresholds.probability_threshold)
    else:
        rest = prob[~(pu > pu_t)]
        prob_t = (float(np.quantile(rest, thresholds.probability_quantile)) if rest.size
                  else float("nan"))
    return pu_t, prob_t


def categorize(prompt_uncertainty: Sequence[float], prediction_probability: Sequence[float],
               thresholds: TaskMapThresholds = TaskMapThresholds()
               ) -> tuple[list[str], tuple[float, float]]:
    """Assigns each task a category.

    Returns:
      ([N] category names, (pu_threshold, probability_threshold)).
    """
    pu = np.asarray(prompt_uncertainty, dtype=np.float64)
    prob = np.asarray(prediction_probability, dtype=np.float64)
    pu_t, prob_t = resolve_thresholds(pu, prob, thresholds)
    out = []
    for u, p in zip(pu, prob):
        if u > pu_t:
            out.append(AMBIGUOUS)
        elif p >= prob_t:
            out.append(EASY)
        else:
            out.append(DIFFICULT)
    return out, (pu_t, prob_t)


CSV_FIELDS = ("task", "prompt_uncertainty", "prediction_probability", "perplexity", "category",
              "label")


def write_csv(path: str, records: Sequence[dict]) -> None:
    """Writes the Task Map table (one row per task, `CSV_FIELDS` columns) atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: rec.get(k, "") for k in CSV_FIELDS})
    io_utils.atomic_write_text(path, buffer.getvalue())


def plot(records: Sequence[dict], thresholds: tuple[float, float], png_path: str | None,
         svg_path: str | None, title: str = "Task Map") -> None:
    """Draws the Task Map: x = prompt uncertainty (cube-root scale), y = prediction probability.

    Colours by category, marker by label (circle = classification, triangle = generative),
    dashed lines at the thresholds. Both files are written atomically and deterministically
    (no timestamps in the SVG).

    Args:
      records: dicts with prompt_uncertainty, prediction_probability, category, label.
      thresholds: (pu_threshold, probability_threshold) as returned by `categorize`.
      png_path / svg_path: outputs (None = skip).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"svg.hashsalt": "activeit-jax", "path.simplify": False}):
        fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=150)
        try:
            ax.set_xscale("function", functions=(np.cbrt, lambda v: np.power(v, 3)))
            for category in CATEGORIES:
                for label, marker in MARKERS.items():
                    sel = [r for r in records if r["category"] == category
                           and r.get("label", "gen") == label]
                    if not sel:
                        continue
                    kind = "classification" if label == "cls" else "generative"
                    ax.scatter([r["prompt_uncertainty"] for r in sel],
                               [r["prediction_probability"] for r in sel],
                               c=COLORS[category], marker=marker, s=18, alpha=0.8,
                               linewidths=0, label=f"{category} ({kind})")
            pu_t, prob_t = thresholds
            if np.isfinite(pu_t):
                ax.axvline(pu_t, color="grey", linestyle="--", linewidth=0.8)
            if np.isfinite(prob_t) and np.isfinite(pu_t):
                ax.plot([0.0, pu_t], [prob_t, prob_t], color="grey", linestyle="--",
                        linewidth=0.8)
            ax.set_xlim(left=0.0)
            xmax = max([r["prompt_uncertainty"] for r in records] + [1e-3])
            ticks = [t for t in _X_TICKS if t <= xmax * 1.05]
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("prompt uncertainty (cube-root scale)")
            ax.set_ylabel("prediction probability")
            ax.set_title(f"{title} ({len(records)} tasks)")
            if records:
                ax.legend(fontsize=7, loc="best")
            fig.tight_layout()
            if png_path:
                with io_utils.atomic_open(png_path, "wb") as handle:
                    fig.savefig(handle, format="png", metadata={"Software": None})
            if svg_path:
                with io_utils.atomic_open(svg_path, "wb") as handle:
                    fig.savefig(handle, format="svg", metadata={"Date": None})
        finally:
            plt.close(fig)
