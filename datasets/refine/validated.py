"""`validated`: find and fix label errors, duplicates and outliers in the training split.

- label issues: cleanlab's Datalab on out-of-fold predicted probabilities (k-fold logistic
  regression on fixed features, so every example is scored by a model that never saw it);
- near duplicates and outliers: Datalab on the same features (kNN graph);
- exact duplicates: identical inputs (by content), found exactly, not by a threshold;
- schema / balance: empty inputs, labels outside the classes, class counts and imbalance ratio.

`refine.action`: `report` (change nothing), `drop` (remove label issues, outliers and the extra
copies of duplicates) or `relabel` (label issues get the out-of-fold prediction; extra copies of
exact duplicates are dropped). Only the training split is touched; validation and test stay as
they are, so accuracy stays comparable across refinements.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from . import REFINEMENTS, Refined
from ..task import inputs_digest
from .features import features

log = logging.getLogger("tunebench")
ACTIONS = ("report", "drop", "relabel")
SHOWN = 50  # indices listed per issue type in the report


def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    smallest = int(np.bincount(y).min())
    folds = max(2, min(folds, smallest))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(LogisticRegression(max_iter=2000, C=1.0), x, y, cv=cv, method="predict_proba")


def exact_duplicate_groups(inputs: list) -> list[list[int]]:
    """Groups (of 2+) of positions with identical inputs, first occurrence first."""
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(inputs):
        groups.setdefault(inputs_digest([item]), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def schema_checks(task) -> dict:
    counts = np.bincount(task.train.y, minlength=task.num_classes)
    empty = [i for i, x in enumerate(task.train.x) if isinstance(x, str) and not x.strip()]
    out_of_range = np.flatnonzero((task.train.y < 0) | (task.train.y >= task.num_classes)).tolist()
    if out_of_range:
        raise ValueError(f"training labels at positions {out_of_range[:10]} are outside 0..{task.num_classes - 1} "
                         f"(classes {task.classes})")
    return {
        "class_counts": dict(zip(task.classes, counts.tolist())),
        "imbalance_ratio": float(counts.max() / max(1, counts.min())),
        "empty_inputs": empty[:SHOWN], "num_empty_inputs": len(empty),
    }


def find_issues(task, cfg, ctx) -> dict:
    """Every issue the validator finds in task.train, with positions (not changed yet)."""
    from cleanlab import Datalab

    train = task.train
    x, cache_report = features(train.x, task.modality, ctx.cache_dir)
    probs = out_of_fold_probabilities(x, train.y, int(cfg["folds"]), ctx.seed)
    lab = Datalab(data={"label": train.y}, label_name="label", verbosity=0)
    lab.find_issues(features=x, pred_probs=probs,
                    issue_types={"label": {}, "outlier": {}, "near_duplicate": {"threshold": float(cfg["near_duplicate_threshold"])}})
    label_issues = lab.get_issues("label")
    groups = exact_duplicate_groups(train.x)
    return {
        "label": np.flatnonzero(label_issues["is_label_issue"].to_numpy()),
        "predicted": label_issues["predicted_label"].to_numpy().astype(np.int64),
        "outlier": np.flatnonzero(lab.get_issues("outlier")["is_outlier_issue"].to_numpy()),
        "near_duplicate": np.flatnonzero(lab.get_issues("near_duplicate")["is_near_duplicate_issue"].to_numpy()),
        "exact_duplicate_groups": groups,
        "oof_accuracy": float(np.mean(probs.argmax(1) == train.y)),
        "cache": cache_report,
    }


def _extra_copies(groups: list[list[int]]) -> set[int]:
    return {i for g in groups for i in g[1:]}


@REFINEMENTS.register("validated")
def validated(task, cfg, ctx) -> Refined:
    action = str(cfg["action"])
    if action not in ACTIONS:
        raise ValueError(f"refine.validated.action={action!r}: expected one of {list(ACTIONS)}")
    report = {"action": action, "schema": schema_checks(task)}
    issues = find_issues(task, cfg, ctx)
    label, outlier, near = issues["label"], issues["outlier"], issues["near_duplicate"]
    extra = _extra_copies(issues["exact_duplicate_groups"])
    report.update(
        out_of_fold_accuracy=issues["oof_accuracy"],
        num_label_issues=int(len(label)), label_issues=label[:SHOWN].tolist(),
        num_outliers=int(len(outlier)), outliers=outlier[:SHOWN].tolist(),
        num_near_duplicates=int(len(near)),
        num_exact_duplicate_groups=len(issues["exact_duplicate_groups"]), num_exact_duplicate_extra_copies=len(extra),
        exact_duplicate_groups=issues["exact_duplicate_groups"][:SHOWN],
        **issues["cache"],
    )
    train = task.train
    if action == "drop":
        remove = set(label.tolist()) | set(outlier.tolist()) | extra
        keep = np.array([i for i in range(len(train)) if i not in remove], dtype=np.int64)
        train = train.subset(keep)
        report["removed"] = len(remove)
    elif action == "relabel":
        y = train.y.copy()
        y[label] = issues["predicted"][label]
        keep = np.array([i for i in range(len(train)) if i not in extra], dtype=np.int64)
        train = replace(train, y=y).subset(keep)
        report.update(relabeled=int(np.sum(y != task.train.y)), removed=len(extra))
    report["train_size_before"], report["train_size_after"] = len(task.train), len(train)
    log.info("validated (%s): %d label issues, %d outliers, %d exact-duplicate copies; train %d -> %d",
             action, len(label), len(outlier), len(extra), len(task.train), len(train))
    return Refined(task=task.with_train(train), report=report)
