"""Scikit-learn estimators on raw pixels: the classical baselines of the Fashion-MNIST authors' benchmark
(Xiao et al. 2017, Table 3; github.com/zalandoresearch/fashion-mnist benchmark/runner.py), run as they ran
them: the pixels standardised with a StandardScaler fitted on the training split, the training split
shuffled (here with the run seed), the estimator built from its stated parameters, fitted, then scored
on the test split.

`method.estimator` names the class (`sklearn.ensemble.RandomForestClassifier`), `method.params` its keyword
arguments exactly as scikit-learn names them; estimators that take a `random_state` get the run seed.
`method.scaler` (`standard`, the default, or `none`: the pixels as the task gives them) and `method.shuffle`
(default true: the training rows shuffled by the seed; false: in the task's order) restate other protocols,
e.g. the Scipy Lecture Notes' digits comparison (experiment=digits_sklearn), which fits on the split as it is.
There is no step loop, so no engine: the run's meter still times it (train / eval phases) and the record
names the estimator and its fitted size. The network the runner built is replaced by an empty module, so
the record's torch parameter counts are 0 (nothing of it was trained).
"""
from __future__ import annotations

import importlib
import inspect
from types import SimpleNamespace

import numpy as np
import torch

from tunebench.core.run_context import Result, RunContext

from . import METHODS
from .classifier import test_metrics


def estimator_class(path: str):
    module, _, name = str(path).rpartition(".")
    if not module.startswith("sklearn."):
        raise ValueError(f"method.estimator={path}: expected a scikit-learn class path such as "
                         f"sklearn.ensemble.RandomForestClassifier")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"method.estimator={path}: no such scikit-learn class ({e})") from None


def make_estimator(method_cfg, seed: int):
    cls = estimator_class(method_cfg.estimator)
    params = dict(method_cfg.get("params") or {})
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"method.params: {unknown} are not parameters of {cls.__name__} "
                         f"(it takes {', '.join(sorted(accepted))})")
    if "random_state" in accepted and "random_state" not in params:
        params["random_state"] = seed
    return cls(**params)


SCALERS = ("standard", "none")


def protocol(method_cfg) -> tuple[str, bool]:
    """(scaler, shuffle) of the method YAML; defaults are the Fashion-MNIST benchmark's (standardise, shuffle)."""
    scaler, shuffle = str(method_cfg.get("scaler", "standard")), method_cfg.get("shuffle", True)
    if scaler not in SCALERS:
        raise ValueError(f"method.scaler={scaler!r}: expected one of {', '.join(SCALERS)}")
    if not isinstance(shuffle, bool):
        raise ValueError(f"method.shuffle={shuffle!r}: expected true or false")
    return scaler, shuffle


def pixel_matrix(split) -> np.ndarray:
    return np.stack([np.asarray(x, dtype=np.float32).reshape(-1) for x in split.x])


def fitted_size(estimator) -> int:
    """Numbers the fitted estimator holds: coefficients and intercepts, or tree nodes (0 if neither)."""
    arrays = [getattr(estimator, a, None) for a in ("coef_", "intercept_", "coefs_", "intercepts_", "theta_", "var_")]
    total = sum(np.size(a) for arr in arrays if arr is not None for a in (arr if isinstance(arr, list) else [arr]))
    trees = getattr(estimator, "estimators_", None)
    trees = trees if trees is not None else [estimator] if hasattr(estimator, "tree_") else []
    return int(total + sum(t.tree_.node_count for t in np.ravel(trees) if hasattr(t, "tree_")))


class NoNetwork(torch.nn.Module):
    """What the runner counts for an estimator that is not a torch network."""


@METHODS.register("sklearn")
class SklearnEstimator:
    name = "sklearn"
    modalities = ("image",)
    generates = False

    def adapt(self, net, method_cfg):
        estimator_class(method_cfg.estimator)  # a wrong name or protocol fails before any work
        protocol(method_cfg)
        return NoNetwork()

    def fit_evaluate(self, run: RunContext) -> Result:
        from sklearn.preprocessing import StandardScaler
        from sklearn.utils import shuffle

        task, meter = run.task, run.meter
        estimator = make_estimator(run.method, run.seed)
        scaling, shuffled = protocol(run.method)
        with meter.phase("train"):
            x_train, y_train = pixel_matrix(task.train), np.asarray(task.train.y)
            scaler = StandardScaler().fit(x_train) if scaling == "standard" else None
            x_train = scaler.transform(x_train) if scaler else x_train
            if shuffled:
                x_train, y_train = shuffle(x_train, y_train, random_state=run.seed)
            estimator.fit(x_train, y_train)
        meter.add_train_samples(len(y_train))
        with meter.phase("eval"):
            x_test = pixel_matrix(task.test)
            preds = estimator.predict(scaler.transform(x_test) if scaler else x_test)
        test = SimpleNamespace(labels=np.asarray(task.test.y))
        metrics = test_metrics(np.asarray(preds), test, None, task.majority_baseline())
        engine = {"estimator": type(estimator).__name__, "params": {k: v for k, v in estimator.get_params().items()
                                                                    if isinstance(v, (int, float, str, bool, type(None)))},
                  "fitted_size": fitted_size(estimator), "train_examples": int(len(y_train)),
                  "scaler": scaling, "shuffled": shuffled}
        return Result(metrics, [], 0, engine)
