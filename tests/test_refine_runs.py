"""Refinements through the runner: chains in order, the human oracle's clean stop and resume, SSL init."""
import csv

import pytest

from tunebench.app.runner import run_cell

from .conftest import ROOT
from .test_images import DIGITS, digits_task
from .test_runner import compose_cfg, records

ACTIVE = ["refine.active.seed_size=50", "refine.active.budget=40", "refine.active.rounds=2"]


def test_refinements_chain_in_the_order_given(tmp_path, monkeypatch):
    cfg = compose_cfg(tmp_path, monkeypatch, *DIGITS, "method=full", "refine=[validated,active]", *ACTIVE)
    assert run_cell(cfg) == "ok"
    [record] = records(tmp_path)
    validated, active = record["refinements"]
    assert (validated["name"], active["name"]) == ("validated", "active")
    assert record["cell"]["refine"] == "validated+active"
    assert active["train_size_before"] == validated["train_size_after"] < 897  # active saw the cleaned split
    assert record["task"]["sizes"]["train"] == 50 + 40 and record["task"]["sizes"]["test"] == 360


def fill_with_true_labels(folder):
    pool = digits_task().pool
    for path in sorted(folder.glob("round_*.csv")):
        rows = list(csv.DictReader(open(path)))
        if rows and not rows[0]["label"]:
            for row in rows:
                row["label"] = str(pool.y[int(row["pool_index"])])
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)


def test_human_oracle_stops_cleanly_and_the_same_command_resumes(tmp_path, monkeypatch):
    human = tmp_path / "labels"
    overrides = [*DIGITS, "method=full", "refine=active", *ACTIVE, "refine.active.oracle=human",
                 f"refine.active.human_dir={human}"]
    assert run_cell(compose_cfg(tmp_path, monkeypatch, *overrides)) == "awaiting_labels"
    [record] = records(tmp_path)
    assert record["status"] == "awaiting_labels" and record["error"]["labels_file"] == str(human / "round_0.csv")
    assert "re-run the same command" in record["error"]["message"] and record["cell"]["refine"] == "active"
    assert len(list((human / "round_0").glob("*.png"))) == 20  # the round's queries as pictures
    fill_with_true_labels(human)
    assert run_cell(compose_cfg(tmp_path, monkeypatch, *overrides)) == "awaiting_labels"  # round 2 of 2 now
    fill_with_true_labels(human)
    assert run_cell(compose_cfg(tmp_path, monkeypatch, *overrides)) == "ok"
    [record] = records(tmp_path)
    assert record["status"] == "ok" and record["task"]["sizes"]["train"] == 90
    assert [p["labels"] for p in record["refinements"][0]["curve"]] == [50, 70, 90]


def test_ssl_weights_initialise_the_model_the_method_trains(tmp_path, monkeypatch):
    cfg = compose_cfg(tmp_path, monkeypatch, *DIGITS, "method=lora", "method.lr=1e-2", "refine=ssl", "refine.ssl.steps=20")
    assert run_cell(cfg) == "ok"
    [record] = records(tmp_path)
    [ssl] = record["refinements"]
    assert ssl["steps"] == 20 and len(ssl["loss_curve"]) == 2 and ssl["cache_built"] is True
    assert ssl["initialised_tensors"] == 6  # two convs and the hidden linear layer (weights + biases), no head
    assert record["metrics"]["test_acc"] > 0.1


def test_a_refinement_leaves_the_runs_random_streams_alone_whether_it_builds_or_loads(tmp_path):
    import random

    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from tunebench.datasets.refine import RefineContext, apply_chain
    from tunebench.core.seeding import seed_everything

    task = digits_task()
    # On a miss, synthetic trains a generator and builds a network to load it into (torch's init
    # draws from the global stream); on a hit it only reads the cached samples.
    synthetic = OmegaConf.load(ROOT / "conf" / "refine" / "synthetic.yaml")
    synthetic.merge_with({"generator": "diffusion", "ratio": 0.05, "diffusion": {"steps": 20, "sample_steps": 2}})
    refine = OmegaConf.create({"synthetic": synthetic})
    draws = []
    for _ in range(2):  # the first call builds the artefact, the second loads it
        seed_everything(0)
        apply_chain(task, refine, RefineContext(seed=0, cache_dir=tmp_path / "cache"))
        draws.append((torch.rand(3).tolist(), np.random.rand(), random.random()))
    seed_everything(0)
    assert draws[0] == draws[1] == (torch.rand(3).tolist(), np.random.rand(), random.random())
