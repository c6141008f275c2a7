"""Records of a sweep as one pandas DataFrame, one row per run.

Each row also carries its **comparison** (everything in the run's semantic config but the arm and the
seed: records that differ in model, data size, epochs, refinement knobs, ... are never pooled) and its
**arm** (the method and its own knobs; lr and lr_scale are the arm's tuning, chosen on validation).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from tunebench.core.record import NON_SEMANTIC_KEYS, iter_record_files

CELL_KEYS = ["task", "refine", "method", "lr", "seed", "model"]
METRIC_KEYS = ["test_acc", "test_macro_f1", "best_val_acc", "majority_baseline_test_acc", "test_correct",
               "dp_epsilon", "dp_delta"]  # dp_*: federated runs with differential privacy (the stated guarantee)
# Continual methods' own (methods/continual.py); absent (NaN) for every other method.
CONTINUAL_KEYS = ["avg_acc", "forgetting", "bwt"]
# CLIP methods' own (methods/clip.py): zero-shot accuracy with class prompts and retrieval recall@k.
CLIP_KEYS = ["zero_shot_acc", "recall_i2t_1", "recall_i2t_5", "recall_t2i_1", "recall_t2i_5"]
# Few-shot methods' own (methods/fewshot.py): meta-test accuracy over N-way K-shot tasks and its 95% CI.
FEWSHOT_KEYS = ["meta_test_acc", "meta_test_ci95_low", "meta_test_ci95_high", "meta_test_tasks", "ways", "shots"]
COST_KEYS = [
    "params_trainable", "params_trainable_excl_head", "params_total", "trainable_pct", "training_state_bytes",
    "peak_memory_mb", "train_seconds", "eval_seconds", "train_cpu_seconds", "eval_cpu_seconds", "samples_per_second",
    "saved_bytes", "device_seconds",
    "comm_bytes_total", "comm_bytes_per_client_round", "peak_memory_server_mb",
]  # multi-process runs: peak memory and training-state bytes are per device (the largest rank's);
# federated runs (bench/core/federated.py): the largest client's, plus the bytes sent both ways
SETTING_KEYS = ["ways", "shots"]  # few-shot runs: N-way K-shot settings are never averaged together
# Method knobs that set the problem both arms are run on rather than the arm itself (few-shot task
# shape and meta-test set, continual streams): they belong to the comparison, not to the arm.
SETTING_KNOBS = ("ways", "shots", "query", "test_tasks", "meta_test_classes", "meta_val_classes",
                 "class_split_seed", "rotations", "stream", "experiences", "class_order", "angles", "angle_step",
                 "domain_tasks")
# Method knobs that are the arm's tuning or bookkeeping, not its identity.
ARM_TUNING = ("lr", "image_lr", "claim_reference")
# Required in an ok record, as (section, field): the claim and the report cannot do without them.
REQUIRED_OK = (("config", "method"), ("config", "seed"), ("cost", "params_trainable"))


def setting_keys(frame: pd.DataFrame) -> list[str]:
    """["ways", "shots"] when the sweep has few-shot runs (their rows split by setting), else []."""
    return [k for k in SETTING_KEYS if k in frame and frame[k].notna().any()]


def flatten(node, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    if not isinstance(node, dict):
        return {prefix: node}
    out = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def comparison_config(config: dict) -> dict:
    """The flat semantic config of a run without its arm (method node, lr_scale) and seed."""
    semantic = {k: v for k, v in config.items() if k not in (*NON_SEMANTIC_KEYS, "method", "seed", "hydra")}
    flat = flatten(semantic)
    flat.pop("train.lr_scale", None)
    method = config.get("method") or {}
    flat.update({f"method.{k}": method[k] for k in SETTING_KNOBS if k in method})
    return flat


def comparison_key(config: dict) -> str:
    """The key of the comparison a run with this (record) config belongs to, as load_frame gives it."""
    return _key(comparison_config(config))


def arm_config(config: dict) -> dict:
    """The method's own knobs (name included) without its lr and the setting knobs."""
    method = config.get("method") or {}
    return flatten({k: v for k, v in method.items() if k not in (*ARM_TUNING, *SETTING_KNOBS)})


def _key(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _check_fields(path: Path, record: dict) -> None:
    """An ok record the claim and report cannot read fails here, naming the file and the field."""
    if record["status"] != "ok":
        return
    for section, field in REQUIRED_OK:
        node = record.get(section)
        if not isinstance(node, dict) or node.get(field) is None:
            raise ValueError(f"{path}: ok record has no {section}.{field} (a malformed or hand-edited record; "
                             f"rerun its cell with force=true or remove the file)")
    test_acc = (record.get("metrics") or {}).get("test_acc")
    if test_acc is not None and not isinstance(test_acc, (int, float)):
        raise ValueError(f"{path}: metrics.test_acc is {test_acc!r}, expected a number")


def ranks_of(record: dict) -> int:
    """How many processes ran the record's cell (1 unless it was a multi-process run)."""
    distributed = (record.get("engine") or {}).get("distributed") or {}
    return int(distributed.get("ranks") or (record.get("cost") or {}).get("ranks") or 1)


def _row(path: Path, record: dict) -> dict:
    _check_fields(path, record)
    cell, metrics, cost = record.get("cell") or {}, record.get("metrics") or {}, record.get("cost") or {}
    config = record.get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: config is {type(config).__name__}, expected a mapping")
    method = config.get("method") or {}
    compared, arm = comparison_config(config), arm_config(config)
    ranks = ranks_of(record)
    if ranks > 1:  # launcher-given processes (SLURM tasks, torchrun) are not in the config: never pooled with one
        compared["ranks"] = ranks
    row = {"run_id": record["run_id"], "status": record["status"], "sweep": record.get("sweep"), "path": str(path),
           "comparison": _key(compared), "comparison_config": compared, "arm_key": _key(arm), "arm_config": arm}
    # A run that failed before its task loaded has no cell; fall back to its config.
    fallback = {
        "task": (config.get("data") or {}).get("name"), "refine": "?", "method": method.get("name"),
        "lr": method.get("lr"), "seed": config.get("seed"), "model": (config.get("model") or {}).get("name"),
    }
    row.update({k: cell.get(k, fallback[k]) for k in CELL_KEYS})
    row.update({k: metrics.get(k) for k in METRIC_KEYS + CONTINUAL_KEYS + CLIP_KEYS})
    row.update(fewshot_values(metrics))
    for key in SETTING_KEYS:  # a failed few-shot run still belongs to its N-way K-shot setting
        if row[key] is None:
            row[key] = method.get(key)
    # The arm `tunebench claim` compares this method with (method.claim_reference; None: "full").
    row["claim_reference"] = method.get("claim_reference")
    row.update({k: cost.get(k) for k in COST_KEYS})
    row["ranks"] = ranks
    if row["device_seconds"] is None:  # one process, one device
        row["device_seconds"] = cost.get("train_seconds")
    row["slurm_job_id"] = slurm_job(record.get("env") or {})
    row.update(started_at=record.get("started_at"), finished_at=record.get("finished_at"),
               machine=machine_label((record.get("env") or {}).get("machine")))
    row["error"] = (record.get("error") or {}).get("message")
    row["unused_examples"] = unused_examples(record.get("task") or {})
    row["claim_plan"] = declared_plan(config)  # what the sweep declared (tunebench claim)
    return row


def unused_examples(task: dict) -> int | None:
    """Examples the task's source holds that none of its splits uses (a larger test set could take them); None
    where the record does not say how many the source holds."""
    total, sizes = task.get("source_examples"), task.get("sizes") or {}
    if not isinstance(total, int) or not sizes:
        return None
    return max(total - sum(int(n) for n in sizes.values()), 0)


def declared_plan(config: dict) -> str | None:
    """The claim plan a run's config declares, as one comparable string: primary hypotheses and / or a sequential
    design; None when it declares neither (the fixed design with Holm, as every record before plans existed)."""
    claim, decide = config.get("claim") or {}, config.get("decide") or {}
    plan = {**({"claim": claim} if claim.get("primary") else {}),
            **({"decide": decide} if decide.get("max_seeds") is not None else {})}
    return json.dumps(plan, sort_keys=True) if plan else None


def fewshot_values(metrics: dict) -> dict:
    """The few-shot columns; the CI [low, high] becomes two numbers."""
    low, high = (metrics.get("meta_test_ci95") or [None, None])[:2]
    values = {k: metrics.get(k) for k in FEWSHOT_KEYS}
    values.update(meta_test_ci95_low=low, meta_test_ci95_high=high)
    return values


def machine_label(machine: dict | None) -> str | None:
    """`cpu model, instruction set, N threads` (+ GPUs): what a record's timings and float results depend on."""
    if not machine:
        return None
    threads = machine.get("torch_threads")
    parts = [machine.get("cpu_model") or "?", machine.get("torch_cpu_capability") or "?",
             f"{threads} thread{'s' if threads != 1 else ''}" if threads else None, ", ".join(machine.get("cuda_devices") or [])]
    return ", ".join(p for p in parts if p)


def slurm_job(env: dict) -> str | None:
    """The job id as sacct / squeue show it: `<array job>_<task>` for array jobs."""
    if env.get("slurm_array_job_id") and env.get("slurm_array_task_id") is not None:
        return f"{env['slurm_array_job_id']}_{env['slurm_array_task_id']}"
    return env.get("slurm_job_id")


def load_frame(sweep_dir: Path) -> pd.DataFrame:
    rows = [_row(path, r) for path, r in iter_record_files(Path(sweep_dir))]
    if not rows:
        raise FileNotFoundError(f"no run records (*.json) under {sweep_dir}")
    frame = pd.DataFrame(rows)
    numeric = [k for k in METRIC_KEYS + CONTINUAL_KEYS + CLIP_KEYS + FEWSHOT_KEYS + COST_KEYS if k != "test_correct"] + ["lr", "seed"]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    frame["configuration"] = configuration_labels(frame)
    frame["arm"] = arm_labels(frame)
    return frame


def configuration_labels(frame: pd.DataFrame) -> pd.Series:
    """Name each comparison by the config values that tell it apart from the others with the same task and
    refinement: those columns are shown beside it, and a refinement's own keys (present in its cells,
    absent in the others) would otherwise fill the label. A swept refinement knob still shows."""
    labels = {}
    for _, group in frame.groupby(["task", "refine"], dropna=False):
        labels.update(differences(group, "comparison", "comparison_config"))
    return frame["comparison"].map(labels)


def differences(frame: pd.DataFrame, key: str, flat: str) -> dict[str, str]:
    """Name each distinct `key` by the flat config values that differ between them ("" if only one)."""
    configs = frame.drop_duplicates(key).set_index(key)[flat].to_dict()
    if len(configs) < 2:
        return {k: "" for k in configs}
    fields = sorted({f for c in configs.values() for f in c})
    varying = [f for f in fields if len({json.dumps(c.get(f), sort_keys=True, default=str) for c in configs.values()}) > 1]
    return {k: ", ".join(f"{f}={_short(c.get(f, '-'))}" for f in varying) for k, c in configs.items()}


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def arm_labels(frame: pd.DataFrame) -> pd.Series:
    """The method name, plus its knobs where one comparison holds the same method with different knobs
    (`lora[r=16]` beside `lora[r=8]`)."""
    labels = frame["method"].astype(str).copy()
    for _, group in frame.groupby(["comparison", "method"], dropna=False):
        if group["arm_key"].nunique() > 1:
            named = differences(group, "arm_key", "arm_config")
            labels.loc[group.index] = [f"{m}[{named[k]}]" for m, k in zip(group["method"], group["arm_key"])]
    return labels
