"""Cheap classifiers on fixed features (datasets/refine/features.py) that judge generated data.

- label consistency: a classifier trained on the real training split agrees with a generated
  example's intended label (the filter of `synthetic` and `augmented`);
- classifier two-sample test (C2ST, Lopez-Paz & Oquab 2017): cross-validated accuracy of telling real
  from synthetic; 0.5 means indistinguishable, 1.0 trivially separable;
- train on synthetic, test on real (TSTR; Esteban et al. 2017): accuracy on held-out real data of a
  classifier trained on synthetic data only, next to the same classifier trained on real data (TRTR).
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def fit_probe(x: np.ndarray, y: np.ndarray) -> LogisticRegression:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0)).fit(x, y)


def consistent(probe, x: np.ndarray, intended: np.ndarray, threshold: float) -> np.ndarray:
    """Mask of examples the probe assigns to their intended class with probability >= threshold."""
    if len(x) == 0:
        return np.zeros(0, dtype=bool)
    probs = probe.predict_proba(x)
    classes = list(probe.classes_)
    column = np.array([classes.index(c) if c in classes else -1 for c in intended])
    p_intended = np.where(column >= 0, probs[np.arange(len(x)), np.maximum(column, 0)], 0.0)
    return (probs.argmax(1) == np.maximum(column, 0)) & (column >= 0) & (p_intended >= threshold)


def c2st_accuracy(real: np.ndarray, synthetic: np.ndarray, seed: int, max_per_side: int = 2000) -> float:
    """5-fold accuracy of a linear real-vs-synthetic classifier on equal-size samples of each."""
    rng = np.random.default_rng(seed)
    n = min(len(real), len(synthetic), max_per_side)
    if n < 10:
        return float("nan")
    x = np.concatenate([real[rng.choice(len(real), n, replace=False)], synthetic[rng.choice(len(synthetic), n, replace=False)]])
    y = np.concatenate([np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)])
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    # One global scale, not per-feature standardisation: a pixel that is always 0 in real images
    # would turn a 0.001 difference into a perfect separation (numerical dust, not the distribution).
    x = x / max(float(x[y == 0].std()), 1e-8)
    return float(cross_val_score(LogisticRegression(max_iter=2000), x, y, cv=cv).mean())


def holdout_accuracy(train_x, train_y, test_x, test_y) -> float:
    if len(np.unique(train_y)) < 2:
        return float("nan")
    return float(np.mean(fit_probe(train_x, train_y).predict(test_x) == test_y))


def fidelity(real_x, real_y, synth_x, synth_y, heldout_x, heldout_y, seed: int) -> dict:
    """C2ST accuracy and train-on-synthetic / train-on-real accuracy on held-out real data."""
    return {
        "c2st_accuracy": c2st_accuracy(real_x, synth_x, seed),
        "tstr_accuracy": holdout_accuracy(synth_x, synth_y, heldout_x, heldout_y) if len(synth_x) else float("nan"),
        "trtr_accuracy": holdout_accuracy(real_x, real_y, heldout_x, heldout_y),
        "heldout": "validation",
    }
