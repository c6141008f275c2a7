"""Records of a sweep as one pandas DataFrame, one row per run."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from tunebench.record import iter_records

CELL_KEYS = ["task", "refine", "method", "lr", "seed", "model"]
METRIC_KEYS = ["test_acc", "test_macro_f1", "best_val_acc", "majority_baseline_test_acc", "test_correct"]
# Continual methods' own (methods/continual.py); absent (NaN) for every other method.
CONTINUAL_KEYS = ["avg_acc", "forgetting", "bwt"]
# CLIP methods' own (methods/clip.py): zero-shot accuracy with class prompts and retrieval recall@k.
CLIP_KEYS = ["zero_shot_acc", "recall_i2t_1", "recall_i2t_5", "recall_t2i_1", "recall_t2i_5"]
# Few-shot methods' own (methods/fewshot.py): meta-test accuracy over N-way K-shot tasks and its 95% CI.
FEWSHOT_KEYS = ["meta_test_acc", "meta_test_ci95_low", "meta_test_ci95_high", "meta_test_tasks", "ways", "shots"]
COST_KEYS = [
    "params_trainable", "params_trainable_excl_head", "params_total", "trainable_pct", "training_state_bytes",
    "peak_memory_mb", "train_seconds", "eval_seconds", "samples_per_second", "saved_bytes",
]
GROUP_KEYS = ["task", "refine", "method", "lr"]
SETTING_KEYS = ["ways", "shots"]  # few-shot runs: N-way K-shot settings are never averaged together


def setting_keys(frame: pd.DataFrame) -> list[str]:
    """["ways", "shots"] when the sweep has few-shot runs (their rows split by setting), else []."""
    return [k for k in SETTING_KEYS if k in frame and frame[k].notna().any()]


def _row(record: dict) -> dict:
    cell, metrics, cost = record.get("cell") or {}, record.get("metrics") or {}, record.get("cost") or {}
    config = record.get("config") or {}
    row = {"run_id": record["run_id"], "status": record["status"], "sweep": record.get("sweep")}
    # A run that failed before its task loaded has no cell; fall back to its config.
    fallback = {
        "task": (config.get("data") or {}).get("name"), "refine": "?", "method": (config.get("method") or {}).get("name"),
        "lr": (config.get("method") or {}).get("lr"), "seed": config.get("seed"), "model": (config.get("model") or {}).get("name"),
    }
    row.update({k: cell.get(k, fallback[k]) for k in CELL_KEYS})
    row.update({k: metrics.get(k) for k in METRIC_KEYS + CONTINUAL_KEYS + CLIP_KEYS})
    row.update(fewshot_values(metrics))
    # The arm `tunebench claim` compares this method with (method.claim_reference; None: "full").
    row["claim_reference"] = (config.get("method") or {}).get("claim_reference")
    row.update({k: cost.get(k) for k in COST_KEYS})
    row["slurm_job_id"] = slurm_job(record.get("env") or {})
    row["error"] = (record.get("error") or {}).get("message")
    return row


def fewshot_values(metrics: dict) -> dict:
    """The few-shot columns; the CI [low, high] becomes two numbers."""
    low, high = (metrics.get("meta_test_ci95") or [None, None])[:2]
    values = {k: metrics.get(k) for k in FEWSHOT_KEYS}
    values.update(meta_test_ci95_low=low, meta_test_ci95_high=high)
    return values


def slurm_job(env: dict) -> str | None:
    """The job id as sacct / squeue show it: `<array job>_<task>` for array jobs."""
    if env.get("slurm_array_job_id") and env.get("slurm_array_task_id") is not None:
        return f"{env['slurm_array_job_id']}_{env['slurm_array_task_id']}"
    return env.get("slurm_job_id")


def load_frame(sweep_dir: Path) -> pd.DataFrame:
    rows = [_row(r) for r in iter_records(Path(sweep_dir))]
    if not rows:
        raise FileNotFoundError(f"no run records (*.json) under {sweep_dir}")
    frame = pd.DataFrame(rows)
    numeric = [k for k in METRIC_KEYS + CONTINUAL_KEYS + CLIP_KEYS + FEWSHOT_KEYS + COST_KEYS if k != "test_correct"] + ["lr", "seed"]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    return frame
