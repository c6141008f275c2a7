"""Continual learning through Avalanche: streams, strategies, forgetting metrics, report columns, claim pairing."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tunebench.app.claim import check
from tunebench.app.frame import load_frame
from tunebench.core.record import iter_records
from tunebench.app.report import write_report
from tunebench.app.runner import run_cell

from .conftest import ROOT
from .test_runner import compose_cfg

# Class-incremental digits: 5 experiences of 2 classes (0-1, ..., 8-9), small CNN from scratch,
# 20 epochs per experience (~2 s a run at 1 thread).
DIGITS = ["data=digits", "model=small_cnn", "data.train_size=null", "data.validation_size=180", "data.test_size=360",
          "data.pool_size=360", "train.batch_size=32", "train.epochs=20", "threads=1"]
# Rotten Tomatoes sentences, then IMDB reviews, on the tiny random BERT: fast, for the plumbing only.
TEXT_STREAM = ["method.stream=domain_incremental", "method.experiences=null", "method.domain_tasks=[imdb]",
               "data.train_size=32", "data.validation_size=32", "data.test_size=48", "data.pool_size=16", "threads=1"]


def sweep_records(root, sweep: str) -> dict:
    return {(r["cell"]["method"], r["cell"]["seed"]): r for r in iter_records(root / "results" / "runs" / sweep)}


@pytest.fixture(scope="module")
def digits_sweep(tmp_path_factory):
    """One record per strategy on class-incremental digits, seed 0."""
    root = tmp_path_factory.mktemp("continual")
    with pytest.MonkeyPatch.context() as mp:
        for method in ("cl_naive", "cl_ewc", "cl_replay", "cl_joint", "cl_lora"):
            assert run_cell(compose_cfg(root, mp, *DIGITS, f"method={method}", "sweep=digits")) == "ok", method
    return root, sweep_records(root, "digits")


@pytest.mark.slow
def test_naive_forgets_the_first_experience_that_joint_keeps_and_replay_forgets_far_less(digits_sweep):
    _, records = digits_sweep
    metrics = {method: r["metrics"] for (method, _), r in records.items()}
    naive, replay, joint, ewc = metrics["cl_naive"], metrics["cl_replay"], metrics["cl_joint"], metrics["cl_ewc"]
    # Measured (seed 0): final accuracy on experience 0 (digits 0 and 1): naive 0.00, joint 1.00, replay 0.96.
    assert naive["final_exp_acc"][0] <= 0.05 and joint["final_exp_acc"][0] >= 0.9
    assert joint["final_exp_acc"][0] - naive["final_exp_acc"][0] >= 0.85
    # Forgetting: naive 1.00 (every earlier experience drops from ~1.0 to 0), replay (200 examples) 0.04.
    assert naive["forgetting"] >= 0.9 and naive["bwt"] == pytest.approx(-naive["forgetting"])
    assert replay["forgetting"] <= naive["forgetting"] - 0.6
    assert replay["final_exp_acc"][0] >= 0.7
    # Stream accuracy: naive 0.19 (only the last two digits), replay 0.94, joint 0.98 (the upper bound).
    assert naive["test_acc"] <= 0.25 and replay["test_acc"] >= 0.8 and joint["test_acc"] >= 0.9
    # EWC does not help in class-incremental learning with one shared head (measured forgetting 1.00,
    # a known result: van de Ven et al. 2019); it still learns each experience as it comes.
    assert ewc["acc_matrix"][0][0] >= 0.9 and ewc["forgetting"] >= 0.9


@pytest.mark.slow
def test_records_hold_the_accuracy_matrix_and_avalanche_forgetting_agrees_with_it(digits_sweep):
    _, records = digits_sweep
    record = records[("cl_naive", 0)]
    m, c = record["metrics"], record["cost"]
    matrix = np.array(m["acc_matrix"])
    assert matrix.shape == (5, 5) and np.all(np.diag(matrix) >= 0.85)
    assert np.all(np.triu(matrix, 1) == 0.0)  # unseen classes are never predicted by a class-incremental learner
    # Avalanche's stream forgetting: mean over earlier experiences of (accuracy right after it - accuracy at the end).
    assert m["forgetting"] == pytest.approx(np.mean(np.diag(matrix)[:4] - matrix[4, :4]))
    assert m["exp_forgetting"][:4] == pytest.approx(list(np.diag(matrix)[:4] - matrix[4, :4])) and m["exp_forgetting"][4] is None
    assert m["avg_acc"] == pytest.approx(matrix[4].mean()) and m["final_exp_acc"] == pytest.approx(list(matrix[4]))
    assert m["test_acc"] == pytest.approx(m["test_correct"].count("1") / 360) and len(m["stream_acc"]) == 5
    assert 0.0 <= m["test_macro_f1"] <= 1.0 and 0.0 <= m["best_val_acc"] <= 1.0
    assert [e["classes"] for e in m["continual"]["experiences"]] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert sum(e["train_size"] for e in m["continual"]["experiences"]) == 897
    assert c["train_samples"] == 20 * 897 and m["steps"] == record["curve"][-1]["step"] == 20 * 5 * 6  # 6 batches of 32 per experience
    assert c["training_state_bytes"] > 0 and c["saved_bytes"] > 0 and c["params_trainable"] == 38282
    joint = records[("cl_joint", 0)]["metrics"]
    assert len(joint["acc_matrix"]) == 1 and joint["forgetting"] is None and joint["bwt"] is None
    lora = records[("cl_lora", 0)]
    assert lora["cost"]["params_trainable"] == 6866  # LoRA r=8 on the CNN's conv / linear layers + the head
    assert lora["config"]["method"]["claim_reference"] == "cl_naive"


@pytest.mark.slow
def test_report_shows_average_accuracy_forgetting_and_bwt_per_strategy(digits_sweep):
    root, _ = digits_sweep
    result = write_report(root / "results" / "runs" / "digits", root / "out")
    header = result["markdown"].splitlines()[0]
    assert "avg acc" in header and "forgetting" in header and "BWT" in header
    table = result["table"].set_index("method")
    assert table.loc["cl_naive", "forgetting_mean"] >= 0.9 and table.loc["cl_replay", "forgetting_mean"] <= 0.3
    assert np.isnan(table.loc["cl_joint", "forgetting_mean"])  # undefined: one training phase
    assert table.loc["cl_naive", "bwt_mean"] == pytest.approx(-table.loc["cl_naive", "forgetting_mean"])
    from tunebench.app.html_report import write_html  # the page's continual panel: one heat map per strategy

    text = write_html(root / "results" / "runs" / "digits", root / "out" / "report.html").read_text()
    assert "<h2>Continual learning</h2>" in text and all(f'id="fig-continual-{m.replace("_", "-")}"' in text for m in table.index)


def test_report_of_a_sweep_without_continual_runs_has_no_continual_columns(tmp_path):
    from .test_report_claim import full_runs, write_run

    sweep = tmp_path / "runs" / "s"
    full_runs(sweep, [0.80, 0.82])
    write_run(sweep, "lora", 0, 0.7)
    header = write_report(sweep)["markdown"].splitlines()[0]
    assert "forgetting" not in header and "BWT" not in header and "avg acc" not in header


def test_claim_compares_continual_lora_with_continual_full_on_a_text_domain_stream(tmp_path, monkeypatch, tiny_bert_dir):
    for method in ("cl_naive", "cl_lora"):
        for seed in (0, 1):
            cfg = compose_cfg(tmp_path, monkeypatch, f"model.name={tiny_bert_dir}", f"method={method}", f"seed={seed}",
                              *TEXT_STREAM)
            assert run_cell(cfg) == "ok", (method, seed)
    records = sweep_records(tmp_path, "t")
    m = records[("cl_lora", 0)]["metrics"]
    assert [e["name"] for e in m["continual"]["experiences"]] == ["rotten_tomatoes", "imdb"]
    assert np.array(m["acc_matrix"]).shape == (2, 2) and m["forgetting"] is not None
    assert len(m["test_correct"]) == 2 * 48 and m["continual"]["refined_experiences"] == [0]
    comparisons = check(load_frame(tmp_path / "results" / "runs" / "t"))
    [entry] = comparisons  # cl_naive is the reference (claim_reference: none), not a PEFT arm of its own
    assert (entry["peft"], entry["reference"], entry["seeds"]) == ("cl_lora", "cl_naive", [0, 1])
    parts = {p["part"].split(" (")[0]: p for p in entry["parts"]}
    full, lora = records[("cl_naive", 0)]["cost"], records[("cl_lora", 0)]["cost"]
    assert parts["trainable params"]["estimate"] == pytest.approx(lora["params_trainable"] / full["params_trainable"])
    assert parts["trainable params"]["estimate"] < 0.2
    # The tiny random BERT's reference stays at the majority baseline: no accuracy verdict against it...
    assert "is not above the trivial baseline (50.0%)" in parts["accuracy"]["note"]
    # ...and without a baseline in the records the two arms are paired per shared test example.
    frame = load_frame(tmp_path / "results" / "runs" / "t").drop(columns="majority_baseline_test_acc")
    [entry] = check(frame)
    accuracy = next(p for p in entry["parts"] if p["part"].startswith("accuracy"))
    assert "2 seeds x 96 shared test examples" in accuracy["note"]


def test_class_incremental_with_fewer_classes_than_experiences_fails_naming_the_problem(tmp_path, monkeypatch, tiny_bert_dir):
    cfg = compose_cfg(tmp_path, monkeypatch, f"model.name={tiny_bert_dir}", "method=cl_naive", "method.experiences=5")
    assert run_cell(cfg) == "failed"
    [record] = iter_records(tmp_path / "results" / "runs" / "t")
    message = record["error"]["message"]
    assert "method.experiences=5" in message and "data=rotten_tomatoes has only 2 classes (negative, positive)" in message
    assert "method.stream=domain_incremental" in message


def test_unknown_strategy_and_peft_type_fail_before_training():
    from tunebench.methods import METHODS
    from tunebench.core.image_models import small_cnn

    from tunebench.core.configs import compose_group

    method = METHODS.get("continual")()
    cfg = compose_group("method", "cl_naive")
    with pytest.raises(KeyError, match=r"unknown continual strategy 'nosuch'; available continual strategys: ewc, joint, lwf, naive, replay"):
        method.adapt(small_cnn(10), OmegaConf.merge(cfg, {"strategy": "nosuch"}))
    with pytest.raises(ValueError, match=r"method.peft.peft_type='NOSUCH': expected one of peft's types \(ADALORA, "):
        method.adapt(small_cnn(10), OmegaConf.merge(cfg, {"peft": {"peft_type": "nosuch"}}))


def test_rotated_domain_stream_has_every_class_in_each_experience_and_exact_right_angles():
    from tunebench.datasets import load
    from tunebench.methods.continual_streams import build_streams, rotate_images

    images = torch.rand(3, 1, 8, 8)
    assert torch.allclose(rotate_images(images, 90), torch.rot90(images, k=1, dims=(2, 3)), atol=1e-5)
    assert torch.equal(rotate_images(images, 0), images)
    task = load(OmegaConf.load(ROOT / "conf" / "data" / "digits.yaml"))
    cfg = OmegaConf.create({"stream": "domain_incremental", "experiences": 4, "angle_step": 30, "angles": None})
    streams = build_streams(task, cfg, None, seed=0)
    assert [e.name for e in streams.experiences] == ["rotated 0 deg", "rotated 30 deg", "rotated 60 deg", "rotated 90 deg"]
    for experience in streams.experiences:
        x, y = experience.splits["train"]
        assert x.shape == (897, 1, 8, 8) and sorted(set(y.tolist())) == list(range(10))
    bench = streams.benchmark()
    assert len(bench.train_stream) == 4 and len(bench.test_stream[3].dataset) == 360
