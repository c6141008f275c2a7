"""`validated`: find and fix label errors, duplicates and outliers in the training split.

- label issues: cleanlab's Datalab on out-of-fold predicted probabilities (k-fold logistic
  regression on fixed features, so every example is scored by a model that never saw it);
- near duplicates and outliers: Datalab on the same features (kNN graph);
- exact duplicates: identical inputs (by content), found exactly, not by a threshold;
- schema / balance: empty inputs, labels outside the classes, class counts and imbalance ratio;
- cross-split leakage: training examples that also occur in validation / test, exactly (same
  content) or nearly (cosine similarity of the features >= `refine.validated.leakage_similarity`).

Every flagged row is written to `issues.csv` (position in the training split, source file and 1-based
data row where the data came from a file, issue, score, given and suggested label, related rows) and
every leak to `leakage.csv`, a cache artefact whose path the record keeps with the counts.

`refine.action`: `report` (change nothing), `drop` (remove label issues, outliers and the extra
copies of duplicates) or `relabel` (label issues get the out-of-fold prediction; extra copies of
exact duplicates are dropped). `refine.validated.leakage`: `report` or `drop` (also remove leaked
training examples). Only the training split is touched; validation and test stay as
they are, so accuracy stays comparable across refinements.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from tunebench.core.cache import cached

from . import REFINEMENTS, Refined
from ..task import inputs_digest
from .features import features

log = logging.getLogger("tunebench")
ACTIONS = ("report", "drop", "relabel")
SHOWN = 50  # empty-input positions listed in the schema report


def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    smallest = int(np.bincount(y).min())
    folds = max(2, min(folds, smallest))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(LogisticRegression(max_iter=2000, C=1.0), x, y, cv=cv, method="predict_proba")


def positions_by_content(inputs: list) -> dict[str, list[int]]:
    """Content digest -> positions of the inputs with that content, in order."""
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(inputs):
        groups.setdefault(inputs_digest([item]), []).append(i)
    return groups


def exact_duplicate_groups(inputs: list) -> list[list[int]]:
    """Groups (of 2+) of positions with identical inputs, first occurrence first."""
    return [g for g in positions_by_content(inputs).values() if len(g) > 1]


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
    label_issues, outliers, near = lab.get_issues("label"), lab.get_issues("outlier"), lab.get_issues("near_duplicate")
    groups = exact_duplicate_groups(train.x)
    return {
        "label": np.flatnonzero(label_issues["is_label_issue"].to_numpy()),
        "label_score": label_issues["label_score"].to_numpy(),
        "predicted": label_issues["predicted_label"].to_numpy().astype(np.int64),
        "outlier": np.flatnonzero(outliers["is_outlier_issue"].to_numpy()),
        "outlier_score": outliers["outlier_score"].to_numpy(),
        "near_duplicate": np.flatnonzero(near["is_near_duplicate_issue"].to_numpy()),
        "near_duplicate_score": near["near_duplicate_score"].to_numpy(),
        "near_duplicate_sets": [list(map(int, s)) for s in near["near_duplicate_sets"]],
        "exact_duplicate_groups": groups,
        "oof_accuracy": float(np.mean(probs.argmax(1) == train.y)),
        "features": x,
        "cache": cache_report,
    }


def _extra_copies(groups: list[list[int]]) -> set[int]:
    return {i for g in groups for i in g[1:]}


def _without(split, positions: set[int]):
    """The split less the examples at `positions`, in order."""
    return split.subset(np.array([i for i in range(len(split)) if i not in positions], dtype=np.int64))


@REFINEMENTS.register("validated")
def validated(task, cfg, ctx) -> Refined:
    action, leakage = str(cfg["action"]), str(cfg["leakage"])
    if action not in ACTIONS:
        raise ValueError(f"refine.validated.action={action!r}: expected one of {list(ACTIONS)}")
    if leakage not in LEAKAGE_ACTIONS:
        raise ValueError(f"refine.validated.leakage={leakage!r}: expected one of {list(LEAKAGE_ACTIONS)}")
    report = {"action": action, "schema": schema_checks(task)}
    issues = find_issues(task, cfg, ctx)
    leaks = cross_split_leaks(task, issues["features"], float(cfg["leakage_similarity"]), ctx)
    label, outlier, near = issues["label"], issues["outlier"], issues["near_duplicate"]
    extra = _extra_copies(issues["exact_duplicate_groups"])
    leaked = {int(i) for i in leaks["train_position"]} if leakage == "drop" else set()
    report.update(
        out_of_fold_accuracy=issues["oof_accuracy"],
        num_label_issues=int(len(label)), num_outliers=int(len(outlier)), num_near_duplicates=int(len(near)),
        num_exact_duplicate_groups=len(issues["exact_duplicate_groups"]), num_exact_duplicate_extra_copies=len(extra),
        leakage=leakage, num_leaks_exact=int((leaks["kind"] == "exact").sum()),
        num_leaks_near=int((leaks["kind"] == "near").sum()),
        **issues["cache"],
    )
    report.update(write_issue_files(task, issues, leaks, cfg, ctx))
    train = task.train
    if action == "drop":
        remove = set(label.tolist()) | set(outlier.tolist()) | extra | leaked
        train = _without(train, remove)
        report["removed"] = len(remove)
    elif action == "relabel":
        y = train.y.copy()
        y[label] = issues["predicted"][label]
        train = _without(replace(train, y=y), extra | leaked)
        report.update(relabeled=int(np.sum(y != task.train.y)), removed=len(extra | leaked))
    elif leaked:
        train = _without(train, leaked)
        report["removed"] = len(leaked)
    report["train_size_before"], report["train_size_after"] = len(task.train), len(train)
    log.info("validated (%s): %d label issues, %d outliers, %d exact-duplicate copies, %d exact / %d near leaks into "
             "validation / test; train %d -> %d; every flagged row: %s", action, len(label), len(outlier), len(extra),
             report["num_leaks_exact"], report["num_leaks_near"], len(task.train), len(train), report["issues_csv"])
    return Refined(task=task.with_train(train), report=report)


LEAKAGE_ACTIONS = ("report", "drop")
ISSUE_COLUMNS = ["position", "source", "source_row", "issue", "score", "given_label", "suggested_label", "related"]
LEAK_COLUMNS = ["train_position", "train_source", "train_source_row", "split", "position", "source", "source_row",
                "kind", "similarity"]


def cross_split_leaks(task, train_features: np.ndarray, similarity: float, ctx) -> pd.DataFrame:
    """Training examples that also occur in validation / test: exact (same content) and near (cosine
    similarity of the features >= `similarity`). A leak makes held-out accuracy measure recall."""
    train_digests = positions_by_content(task.train.x)
    train_unit = _unit(train_features)
    rows = []
    for name in ("validation", "test"):
        split = getattr(task, name)
        exact = set()
        for j, item in enumerate(split.x):
            for i in train_digests.get(inputs_digest([item]), []):
                rows.append(_leak(task.train, i, name, split, j, "exact", 1.0))
                exact.add((i, j))
        if len(split) and len(task.train):
            held_out, _ = features(split.x, task.modality, ctx.cache_dir)
            sims = train_unit @ _unit(held_out).T
            for i, j in zip(*np.nonzero(sims >= similarity)):
                if (int(i), int(j)) not in exact:
                    rows.append(_leak(task.train, int(i), name, split, int(j), "near", float(sims[i, j])))
    return pd.DataFrame(rows, columns=LEAK_COLUMNS)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def _leak(train, i: int, name: str, split, j: int, kind: str, similarity: float) -> dict:
    (train_source, train_row), (source, row) = train.origin(i), split.origin(j)
    return {"train_position": i, "train_source": train_source, "train_source_row": train_row, "split": name,
            "position": j, "source": source, "source_row": row, "kind": kind, "similarity": round(similarity, 6)}


def issue_rows(task, issues: dict) -> pd.DataFrame:
    """One row per (training example, issue): where it came from, the score, given and suggested label."""
    train, classes = task.train, task.classes
    rows = []

    def add(i: int, issue: str, score, suggested=None, related=""):
        source, source_row = train.origin(i)
        rows.append({"position": i, "source": source, "source_row": source_row, "issue": issue,
                     "score": None if score is None else round(float(score), 6), "given_label": classes[train.y[i]],
                     "suggested_label": None if suggested is None else classes[suggested], "related": related})

    for i in issues["label"]:
        add(int(i), "label", issues["label_score"][i], int(issues["predicted"][i]))
    for i in issues["outlier"]:
        add(int(i), "outlier", issues["outlier_score"][i])
    for i in issues["near_duplicate"]:
        add(int(i), "near_duplicate", issues["near_duplicate_score"][i],
            related=" ".join(map(str, issues["near_duplicate_sets"][i])))
    for group in issues["exact_duplicate_groups"]:
        for i in group[1:]:
            add(int(i), "exact_duplicate", None, related=str(group[0]))
    return pd.DataFrame(rows, columns=ISSUE_COLUMNS)


def write_issue_files(task, issues: dict, leaks: pd.DataFrame, cfg, ctx) -> dict:
    """issues.csv (every flagged training row) and leakage.csv, as a cache artefact keyed by what made them."""
    table = issue_rows(task, issues)
    key = {"data": task.data_hash(), "config": {k: cfg[k] for k in cfg}, "seed": ctx.seed,
           "issues": inputs_digest([table.to_csv(index=False), leaks.to_csv(index=False)])}

    def build(folder: Path) -> None:
        table.to_csv(folder / "issues.csv", index=False)
        leaks.to_csv(folder / "leakage.csv", index=False)

    folder = Path(ctx.cache_dir) if ctx.cache_dir is not None else Path(tempfile.mkdtemp(prefix="tb-validated-"))
    entry = cached(folder, "validated-issues", key, build)
    return {"issues_csv": str(entry.path / "issues.csv"), "leakage_csv": str(entry.path / "leakage.csv"),
            "issues_cache_key": entry.key, "issues_cache_built": entry.built, "issues_cache_path": str(entry.path)}
