"""`active`: pool-based active learning with uncertainty sampling.

A labeled seed set (`seed_size` examples drawn from the training split, stratified when possible)
grows by `budget` examples queried from the task's unlabeled pool over `rounds` rounds (the budget
split evenly). Each round a cheap proxy learner, logistic regression on the cached fixed features of
features.py (MiniLM sentence embeddings for text, pixels for images), is refitted on the labeled
set and the most informative pool examples under `strategy` are queried; this is "selection via
proxy" (Coleman et al., ICLR 2020): the examples are picked by a small model and then used to train
the run's real model. Strategies: `entropy` (predictive entropy), `margin` (smallest gap between the
two most probable classes), `least_confidence` (lowest top probability) and `random` (a uniform
sample: the control).

Only an oracle reads the pool's labels: `simulated` reveals `task.pool.y`; `human` writes each
round's queries to `<human_dir>/round_<r>.csv` (`pool_index,input,label`; images as upscaled PNGs
in `round_<r>/`), lists the valid labels in `<human_dir>/README.md` and stops with AwaitingLabels.
Re-running the same command reads the filled CSVs back (selection is deterministic given the seed
and the labels, so the same queries are recomputed; `state.json` records them to catch a changed
config) and goes on from the first round without a CSV.

Knobs (conf/refine/active.yaml): strategy, budget (clipped to the pool size), rounds, seed_size,
oracle, human_dir (null: `<cache_dir>/../active/<key>`), seed (null: the run seed), keep_train
(false: new train = seed set + queried; true: whole original train + queried). The proxy always
starts from the seed set, whatever keep_train says (set seed_size to the training size to start
from all of it). Queried examples leave the pool; validation and test are never touched. The
report has the learning curve of the proxy (validation accuracy vs labels used), the queries per
round and the class counts of the queried labels.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from tunebench.core.cache import cached, key_hash
from tunebench.core.registry import Registry

from . import REFINEMENTS, AwaitingLabels, RefineContext, Refined, refinement_seed
from ..task import Split
from .features import features

log = logging.getLogger("tunebench")
SHOWN = 50  # pool indices listed per round in the report
PNG_SIDE = 160  # images are upscaled to at least this many pixels a side for a human labeler

STRATEGIES: Registry = Registry("active-learning strategy")
ORACLES: Registry = Registry("active-learning oracle")


# --- strategies: (class probabilities of the remaining pool, rng) -> scores, higher = query first ---

@STRATEGIES.register("entropy")
def entropy(probs: np.ndarray, rng) -> np.ndarray:
    return -np.sum(probs * np.log(np.clip(probs, 1e-12, 1.0)), axis=1)


@STRATEGIES.register("margin")
def margin(probs: np.ndarray, rng) -> np.ndarray:
    top2 = np.sort(probs, axis=1)[:, -2:]
    return -(top2[:, 1] - top2[:, 0])


@STRATEGIES.register("least_confidence")
def least_confidence(probs: np.ndarray, rng) -> np.ndarray:
    return 1.0 - probs.max(axis=1)


@STRATEGIES.register("random")
def uniform(probs: np.ndarray, rng) -> np.ndarray:
    return rng.random(len(probs))  # the top-k of iid uniform scores is a uniform sample


# --- the proxy learner ---

def fit_proxy(x: np.ndarray, y: np.ndarray, num_classes: int) -> Callable[[np.ndarray], np.ndarray]:
    """Logistic regression on the labeled set; returns x -> probabilities over all `num_classes`
    (classes not yet labeled get probability 0)."""
    present = np.unique(y)
    if len(present) == 1:  # nothing to discriminate yet: every example looks equally (un)certain
        return lambda xs: np.eye(num_classes)[np.full(len(xs), present[0])]
    model = LogisticRegression(max_iter=2000, C=1.0).fit(x, y)

    def predict_proba(xs: np.ndarray) -> np.ndarray:
        probs = np.zeros((len(xs), num_classes))
        probs[:, model.classes_] = model.predict_proba(xs)
        return probs

    return predict_proba


def accuracy(predict_proba, x: np.ndarray, y: np.ndarray) -> float | None:
    return float(np.mean(predict_proba(x).argmax(1) == y)) if len(y) else None


# --- the selection loop ---

@dataclass
class Selection:
    seed_indices: list[int]   # positions in task.train
    queries: list[list[int]]  # per round: positions in task.pool, in query order
    labels: list[list[int]]   # per round: the oracle's answers
    curve: list[dict]         # {"round", "labels", "val_acc"}

    def queried(self) -> np.ndarray:
        return np.array([i for q in self.queries for i in q], dtype=np.int64)

    def queried_labels(self) -> np.ndarray:
        return np.array([v for lab in self.labels for v in lab], dtype=np.int64)


def draw_seed_set(y: np.ndarray, size: int, rng) -> np.ndarray:
    """`size` training positions, stratified by label when every class can be represented."""
    if size == len(y):
        return np.arange(len(y))
    try:
        chosen, _ = train_test_split(np.arange(len(y)), train_size=size, stratify=y,
                                     random_state=int(rng.integers(2**31)))
    except ValueError:  # too few examples of some class, or size < number of classes
        chosen = rng.choice(len(y), size, replace=False)
    return np.sort(np.asarray(chosen, dtype=np.int64))


def round_sizes(budget: int, rounds: int) -> list[int]:
    """The budget split evenly, the remainder going to the first rounds."""
    return [budget // rounds + (r < budget % rounds) for r in range(rounds)]


def select(feats: dict, seed_labels: np.ndarray, num_classes: int, settings: dict,
           oracle: Callable[[int, np.ndarray], np.ndarray], rng) -> tuple[list, list, list]:
    """Run the rounds: fit the proxy, score the remaining pool, query the top-k, ask the oracle.

    `feats` has the features of the seed set ("seed"), the pool and the validation split; the
    oracle may raise (AwaitingLabels) to stop until a human has answered. Returns the queried
    pool positions and the oracle's labels per round, and the learning curve."""
    queries, labels, curve = [], [], []
    labeled_x, labeled_y = feats["seed"], seed_labels
    remaining = np.ones(len(feats["pool"]), dtype=bool)
    score = STRATEGIES.get(settings["strategy"])
    for r, k in enumerate(tqdm(round_sizes(settings["budget"], settings["rounds"]), desc="active learning", leave=False)):
        proxy = fit_proxy(labeled_x, labeled_y, num_classes)
        curve.append(curve_point(r, len(labeled_y), proxy, feats))
        candidates = np.flatnonzero(remaining)
        scores = score(proxy(feats["pool"][candidates]), rng)
        chosen = candidates[np.argsort(-scores, kind="stable")[:k]]
        answers = np.asarray(oracle(r, chosen), dtype=np.int64)
        queries.append(chosen.tolist())
        labels.append(answers.tolist())
        remaining[chosen] = False
        labeled_x = np.concatenate([labeled_x, feats["pool"][chosen]])
        labeled_y = np.concatenate([labeled_y, answers])
    curve.append(curve_point(settings["rounds"], len(labeled_y), fit_proxy(labeled_x, labeled_y, num_classes), feats))
    return queries, labels, curve


def curve_point(completed_rounds: int, labels: int, proxy, feats: dict) -> dict:
    """`round` counts the query rounds done (0: the seed set alone)."""
    val_acc = accuracy(proxy, feats["validation"], feats["validation_y"])
    return {"round": completed_rounds, "labels": labels, "val_acc": val_acc}


# --- oracles: factory(task, settings, ctx) -> (round, pool positions) -> labels ---

@ORACLES.register("simulated")
def simulated_oracle(task, settings: dict, ctx: RefineContext):
    return lambda r, indices: task.pool.y[np.asarray(indices, dtype=np.int64)]


@ORACLES.register("human")
def human_oracle(task, settings: dict, ctx: RefineContext):
    return HumanOracle(task, Path(settings["human_dir"]), settings)


class HumanOracle:
    """Reads round_<r>.csv if it is there and complete, else writes it and raises AwaitingLabels."""

    def __init__(self, task, folder: Path, settings: dict):
        self.task, self.folder, self.settings = task, folder, settings
        self.state_path = folder / "state.json"
        folder.mkdir(parents=True, exist_ok=True)
        self.state = self._load_state()
        self._write_readme()

    def _load_state(self) -> dict:
        if not self.state_path.exists():
            state = {"config": self.settings["key"], "rounds": {}}
            self.state_path.write_text(json.dumps(state, indent=1))
            return state
        state = json.loads(self.state_path.read_text())
        if state.get("config") != self.settings["key"]:
            changed = sorted(k for k in set(state.get("config", {})) | set(self.settings["key"])
                             if state.get("config", {}).get(k) != self.settings["key"].get(k))
            raise ValueError(f"refine.active.human_dir={str(self.folder)!r} holds labels collected with another "
                             f"configuration (changed: {changed}; see {self.state_path}); use a new human_dir or "
                             f"delete that folder to start over")
        return state

    def _write_readme(self) -> None:
        rows = "\n".join(f"| {i} | {name} |" for i, name in enumerate(self.task.classes))
        (self.folder / "README.md").write_text(
            f"# Active learning labels for task {self.task.name}\n\n"
            f"Fill the empty `label` column of each round_<r>.csv with a class name or its index, save, and\n"
            f"re-run the same command: it resumes from the first round without a CSV. Do not edit pool_index.\n"
            f"For images, `input` is the path (relative to this folder) of an upscaled PNG.\n\n"
            f"| index | class name |\n|---|---|\n{rows}\n")

    def __call__(self, r: int, indices: np.ndarray) -> np.ndarray:
        indices = [int(i) for i in indices]
        recorded = self.state["rounds"].get(str(r))
        if recorded is not None and recorded != indices:
            raise ValueError(f"{self.state_path}: round {r} was asked for pool indices {recorded[:10]}... but this run "
                             f"queries {indices[:10]}...: the data, features or code changed since those labels were "
                             f"collected; use a new refine.active.human_dir or delete {self.folder} to start over")
        path = self.folder / f"round_{r}.csv"
        if path.exists():
            return self._read(r, path, indices)
        self._write(r, path, indices)
        self.state["rounds"][str(r)] = indices
        self.state_path.write_text(json.dumps(self.state, indent=1))
        raise self._awaiting(r, path, len(indices))

    def _awaiting(self, r: int, path: Path, count: int) -> AwaitingLabels:
        return AwaitingLabels(path, (
            f"active learning round {r + 1}/{self.settings['rounds']}: fill the `label` column of the {count} rows in "
            f"{path} (a class name or index; valid labels are listed in {self.folder / 'README.md'}), then re-run "
            f"the same command to resume"))

    def _write(self, r: int, path: Path, indices: list[int]) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["pool_index", "input", "label"])
            for i in indices:
                writer.writerow([i, self._show(r, i), ""])

    def _show(self, r: int, i: int) -> str:
        item = self.task.pool.x[i]
        if isinstance(item, str):
            return item
        relative = Path(f"round_{r}") / f"{i}.png"
        (self.folder / relative).parent.mkdir(exist_ok=True)
        to_png(item).save(self.folder / relative)
        return str(relative)

    def _read(self, r: int, path: Path, expected: list[int]) -> np.ndarray:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or any(k not in rows[0] for k in ("pool_index", "label")):
            raise ValueError(f"{path}: expected columns pool_index,input,label")
        if all(not (row["label"] or "").strip() for row in rows):
            raise self._awaiting(r, path, len(rows))  # untouched: still waiting
        answers = {}
        for line, row in enumerate(rows, start=2):  # line 1 is the header
            index = parse_index(path, line, row["pool_index"])
            if index in answers:
                raise ValueError(f"{path}, line {line}: pool_index {index} appears twice")
            answers[index] = parse_label(path, line, row["label"], self.task.classes)
        if sorted(answers) != sorted(expected):
            raise ValueError(f"{path}: its pool indices {sorted(answers)[:10]}... are not the ones this round queries "
                             f"{sorted(expected)[:10]}...: rows were added/removed/edited or the configuration changed")
        return np.array([answers[i] for i in expected], dtype=np.int64)


def parse_index(path: Path, line: int, value) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{path}, line {line}: pool_index {value!r} is not an integer") from None


def parse_label(path: Path, line: int, value, classes: list[str]) -> int:
    """A class name or a class index (names first, so a class named "3" means that class)."""
    text = (value or "").strip()
    if not text:
        raise ValueError(f"{path}, line {line}: label is empty; fill every row (valid labels: names {classes} "
                         f"or indices 0..{len(classes) - 1})")
    if text in classes:
        return classes.index(text)
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    raise ValueError(f"{path}, line {line}: label {text!r} is neither a class name {classes} "
                     f"nor an index 0..{len(classes) - 1}")


def to_png(image: np.ndarray):
    """A [0, 1] grey (H, W) or (C, H, W) array as a PIL image, upscaled (nearest) for a person to see."""
    from PIL import Image

    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0))
    picture = Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8))
    scale = max(1, -(-PNG_SIDE // max(picture.size)))
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


# --- config, caching and the refinement ---

def positive_int(cfg, key: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"refine.active.{key}={value!r}: expected a positive integer")
    return value


def read_settings(task, cfg, ctx) -> dict:
    strategy, oracle = str(cfg.strategy), str(cfg.oracle)
    for key, value, registry in (("strategy", strategy, STRATEGIES), ("oracle", oracle, ORACLES)):
        if value not in registry.names():
            raise ValueError(f"refine.active.{key}={value!r}: expected one of {registry.names()}")
    budget, rounds = positive_int(cfg, "budget"), positive_int(cfg, "rounds")
    seed_size = positive_int(cfg, "seed_size")
    if seed_size > len(task.train):
        raise ValueError(f"refine.active.seed_size={seed_size}: the training split of {task.name} has only "
                         f"{len(task.train)} examples to draw the labeled seed set from")
    if budget > len(task.pool):
        log.warning("refine.active.budget=%d exceeds the pool of %d examples: querying the whole pool",
                    budget, len(task.pool))
        budget = len(task.pool)
    if rounds > budget:
        raise ValueError(f"refine.active.rounds={rounds}: more rounds than labels to query (budget {budget})")
    settings = {"strategy": strategy, "budget": budget, "budget_requested": int(cfg.budget),
                "rounds": rounds, "seed_size": seed_size, "keep_train": bool(cfg.keep_train),
                "oracle": oracle, "seed": refinement_seed(cfg, ctx)}
    settings["key"] = {k: settings[k] for k in ("strategy", "budget", "rounds", "seed_size", "keep_train", "oracle", "seed")}
    settings["key"]["data"] = task.data_hash()
    settings["human_dir"] = human_dir(cfg, ctx, settings["key"]) if oracle == "human" else None
    return settings


def human_dir(cfg, ctx, key: dict) -> Path:
    if cfg.get("human_dir") is not None:
        return Path(str(cfg.human_dir))
    if ctx.cache_dir is None:
        raise ValueError("refine.active.human_dir=None: set it to the folder for the labeling CSVs "
                         "(there is no cache_dir to put it next to)")
    return Path(ctx.cache_dir).parent / "active" / key_hash(key)


def feature_views(task, seed_positions: np.ndarray, cache_dir) -> tuple[dict, dict]:
    """Features (and their cache reports) of the seed set, the pool and the validation split."""
    feats, reports = {}, {}
    parts = {"seed": [task.train.x[i] for i in seed_positions], "pool": task.pool.x, "validation": task.validation.x}
    for name, inputs in parts.items():
        feats[name], reports[name] = features(inputs, task.modality, cache_dir)
    feats["validation_y"] = task.validation.y
    return feats, reports


def run_selection(task, settings: dict, ctx: RefineContext) -> tuple[Selection, dict]:
    """Draw the seed set, get the features and run the rounds with the configured oracle."""
    rng = np.random.default_rng(settings["seed"])
    seed_positions = draw_seed_set(task.train.y, settings["seed_size"], rng)
    feats, reports = feature_views(task, seed_positions, ctx.cache_dir)
    oracle = ORACLES.get(settings["oracle"])(task, settings, ctx)
    queries, labels, curve = select(feats, task.train.y[seed_positions], task.num_classes, settings, oracle, rng)
    return Selection(seed_positions.tolist(), queries, labels, curve), reports


def cached_selection(task, settings: dict, ctx: RefineContext) -> tuple[Selection, dict]:
    """Simulated oracle: the selection is cached by its key; the human one lives in human_dir."""
    cache_dir = ctx.cache_dir
    if settings["oracle"] == "human" or cache_dir is None:
        selection, reports = run_selection(task, settings, ctx)
        extra = {"human_dir": str(settings["human_dir"])} if settings["human_dir"] else {}
        return selection, {"features": reports, **extra}
    built: dict = {}

    def build(folder: Path) -> None:
        selection, built["features"] = run_selection(task, settings, ctx)
        (folder / "selection.json").write_text(json.dumps(asdict(selection)))

    entry = cached(Path(cache_dir), "active", settings["key"], build)
    selection = Selection(**json.loads((entry.path / "selection.json").read_text()))
    if "features" not in built:  # cache hit: report the (cached) feature entries this selection used
        built["features"] = feature_views(task, np.array(selection.seed_indices), cache_dir)[1]
    return selection, {"features": built["features"], **entry.report()}


def refined_task(task, selection: Selection, keep_train: bool):
    queried = selection.queried()
    base = task.train if keep_train else task.train.subset(selection.seed_indices)
    train = Split(x=list(base.x) + [task.pool.x[i] for i in queried],
                  y=np.concatenate([base.y, selection.queried_labels()]).astype(np.int64))
    left = np.setdiff1d(np.arange(len(task.pool)), queried)
    return replace(task, train=train, pool=task.pool.subset(left))


@REFINEMENTS.register("active")
def active(task, cfg, ctx) -> Refined:
    settings = read_settings(task, cfg, ctx)
    selection, cache_report = cached_selection(task, settings, ctx)
    new_task = refined_task(task, selection, settings["keep_train"])
    counts = np.bincount(selection.queried_labels(), minlength=task.num_classes)
    report = {
        **{k: settings[k] for k in ("strategy", "oracle", "budget", "budget_requested", "rounds", "seed_size",
                                    "keep_train", "seed")},
        "proxy": "logistic regression on fixed features (selection via proxy)",
        "curve": selection.curve,
        "seed_indices": selection.seed_indices[:SHOWN],
        "queries": [{"round": r, "size": len(q), "pool_indices": q[:SHOWN]} for r, q in enumerate(selection.queries)],
        "queried_class_counts": dict(zip(task.classes, counts.tolist())),
        "train_size_before": len(task.train), "train_size_after": len(new_task.train),
        "pool_size_before": len(task.pool), "pool_size_after": len(new_task.pool),
        **cache_report,
    }
    log.info("active (%s, %s oracle): queried %d pool examples in %d rounds; proxy val acc %s -> %s; train %d -> %d",
             settings["strategy"], settings["oracle"], len(selection.queried()), settings["rounds"],
             selection.curve[0]["val_acc"], selection.curve[-1]["val_acc"], len(task.train), len(new_task.train))
    return Refined(task=new_task, report=report)
