"""Meta-learning with learn2learn: N-way K-shot tasks on disjoint classes, MAML above chance, baselines,
the WordNet supersense task, report columns and the fs_lora / fs_full claim pairing."""
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tunebench.app.claim import check
from tunebench.core.configs import compose_group
from tunebench.app.frame import load_frame
from tunebench.core.record import iter_records
from tunebench.app.report import write_report
from tunebench.app.runner import run_cell

from .conftest import ROOT
from .test_runner import compose_cfg

# Digits: the whole split (train 897 / val 180 / test 360), the small CNN, 5-way 1-shot, 600 meta-test tasks.
DIGITS = ["data=digits", "model=small_cnn", "data.train_size=null", "data.validation_size=180", "data.test_size=360",
          "data.pool_size=360", "threads=1"]
# Short meta-training for the tests (the defaults: 300 meta-updates of 16 tasks).
SHORT = {"maml": ["method.iterations=60", "method.meta_batch=8", "method.val_tasks=10"],
         "fs_finetune": ["method.pretrain_epochs=3", "method.val_tasks=10", "method.finetune=head"],
         "fs_probe": ["method.val_tasks=10"]}
# WordNet supersenses, small: 40 glosses per class (about 12 test / 12 validation per class), 5-way 1-shot with
# 5 query glosses, on the tiny random BERT (plumbing, not accuracy).
TEXT = ["data=wordnet_supersenses", "data.max_per_class=40", "data.test_size=0.3", "data.validation_size=0.3",
        "data.pool_size=0.05", "data.train_size=null", "data.max_length=32", "method.query=5", "method.test_tasks=12",
        "method.val_tasks=4", "threads=1"]


def wordnet_or_skip():
    from tunebench.datasets.wordnet_supersenses import DATA_FILES

    folder = os.environ.get("WORDNET_DIR", "/usr/share/wordnet")
    if not all(os.path.exists(os.path.join(folder, name)) for name in DATA_FILES):
        reason = f"WordNet not installed in {folder} (Debian package wordnet-base; make installs it when root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    """A 2-layer random BERT without a classification head (conftest's tiny BERT has a 2-class one, which
    cannot load as the 45-class classifier the runner builds for WordNet supersenses)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tunebench.core.models import resolve_source

    out = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("minilm")[0], local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def sweep_records(root, sweep: str) -> dict:
    return {(r["cell"]["method"], r["cell"]["seed"]): r for r in iter_records(root / "results" / "runs" / sweep)}


def digits_task():
    from tunebench.datasets import load

    return load(OmegaConf.load(ROOT / "conf" / "data" / "digits.yaml"))


def method_cfg(name: str, **changes):
    return compose_group("method", name, **changes)


def test_rotated_digit_classes_split_disjointly_into_n_way_k_shot_tasks():
    from tunebench.methods.fewshot_tasks import TaskSampler, meta_splits

    task = digits_task()
    splits = meta_splits(task, method_cfg("maml"), ways=5, min_examples=1 + 10)
    train, val, test = (splits[k] for k in ("meta_train", "meta_val", "meta_test"))
    assert (len(train.classes), len(val.classes), len(test.classes)) == (25, 5, 10)
    assert set(train.classes).isdisjoint(test.classes) and set(train.classes).isdisjoint(val.classes)
    assert set(val.classes).isdisjoint(test.classes) and len(set(train.classes) | set(val.classes) | set(test.classes)) == 40
    # Examples come from the matching task split: every test image of a meta-test class, in its rotation.
    counts = np.bincount(task.test.y, minlength=10)
    assert len(test) == sum(counts[c // 4] for c in test.classes) and test.inputs.shape[1:] == (1, 8, 8)
    first = test.classes[0]
    base, angle = divmod(first, 4)
    image = torch.as_tensor(task.test.x[int(np.flatnonzero(task.test.y == base)[0])])
    assert torch.equal(test.inputs[0, 0], torch.rot90(image, k=angle, dims=(0, 1)))
    assert test.class_names[0] == f"{base}@{90 * angle}"
    sampler = TaskSampler(test, ways=5, shots=1, query=10)
    tasks = sampler.sample_many(50, seed=3)
    for t in tasks:
        assert t.support.shape == (5,) and t.query.shape == (50,)
        assert sorted(t.support_y.tolist()) == list(range(5)) and np.bincount(t.query_y).tolist() == [10] * 5
        assert set(t.classes) <= set(test.classes) and len(set(t.classes)) == 5
        assert set(t.support).isdisjoint(t.query)
        assert all(test.labels[p] == t.classes[y] for p, y in zip(t.query, t.query_y))
    again = sampler.sample_many(50, seed=3)  # the same seed gives every method the same tasks
    assert all(np.array_equal(a.query, b.query) for a, b in zip(tasks, again))
    five_shot = TaskSampler(train, ways=5, shots=5, query=10).sample()
    assert five_shot.support.shape == (25,) and np.bincount(five_shot.support_y).tolist() == [5] * 5


def test_bad_settings_fail_naming_the_knob():
    from tunebench.methods.fewshot_tasks import meta_splits

    task = digits_task()
    with pytest.raises(ValueError, match=r"method.rotations=\[0, 45\]: expected distinct multiples of 90"):
        meta_splits(task, method_cfg("maml", rotations=[0, 45]), ways=5, min_examples=11)
    with pytest.raises(ValueError, match=r"method.ways=12: meta_test has only 10 classes"):
        meta_splits(task, method_cfg("maml"), ways=12, min_examples=11)


@pytest.fixture(scope="module")
def digits_sweep(tmp_path_factory):
    """maml, fs_finetune (head only) and fs_probe on 5-way 1-shot digits, seed 0, short meta-training."""
    root = tmp_path_factory.mktemp("fewshot")
    with pytest.MonkeyPatch.context() as mp:
        for method, short in SHORT.items():
            assert run_cell(compose_cfg(root, mp, *DIGITS, f"method={method}", *short, "sweep=digits")) == "ok", method
    return root, sweep_records(root, "digits")


@pytest.mark.slow
def test_maml_meta_test_accuracy_is_above_chance_with_a_ci_that_excludes_it(digits_sweep):
    _, records = digits_sweep
    m = records[("maml", 0)]["metrics"]
    low, high = m["meta_test_ci95"]
    assert m["meta_test_tasks"] == 600 and (m["ways"], m["shots"], m["query"]) == (5, 1, 10) and m["chance"] == 0.2
    assert low < m["meta_test_acc"] < high and high - low < 0.05  # 600 tasks: a tight interval
    # Measured (seed 0, 60 meta-updates of 8 tasks): 0.472 [0.464, 0.479]; chance 0.2 (the full 300 x 16: ~0.75).
    assert low > 0.2 + 0.1 and m["above_chance"]
    assert m["test_acc"] == m["meta_test_acc"] and m["test_acc"] == pytest.approx(m["test_correct"].count("1") / (600 * 50))
    assert 0.0 <= m["test_macro_f1"] <= 1.0 and 0.0 <= m["best_val_acc"] <= 1.0


@pytest.mark.slow
def test_baselines_score_the_same_tasks_and_records_hold_the_few_shot_metrics(digits_sweep):
    _, records = digits_sweep
    accs = {method: r["metrics"]["meta_test_acc"] for (method, _), r in records.items()}
    for method, r in records.items():
        m = r["metrics"]
        assert m["meta_test_tasks"] == 600 and len(m["test_correct"]) == 600 * 50, method
        assert m["fewshot"]["meta_test_classes"] == records[("maml", 0)]["metrics"]["fewshot"]["meta_test_classes"]
    # Measured (seed 0): fs_probe (logistic regression on pixels) 0.86, fs_finetune 0.80.
    assert accs[("fs_probe")] > 0.75 and accs["fs_finetune"] > 0.6
    fewshot = records[("maml", 0)]["metrics"]["fewshot"]
    test_counts = np.bincount(digits_task().test.y, minlength=10)
    assert fewshot["meta_test_examples"] == sum(test_counts[int(c.split("@")[0])] for c in fewshot["meta_test_classes"])
    assert len(fewshot["meta_train_classes"]) == 25 and fewshot["meta_test_examples"] in range(355, 365)
    maml = records[("maml", 0)]
    assert maml["cost"]["params_trainable"] == 37957  # the small CNN's body + a 5-way head
    assert maml["cost"]["train_seconds"] > 0 and maml["cost"]["saved_bytes"] > 0 and len(maml["curve"]) == 2  # train.evals=2 (conftest TINY)
    assert records[("fs_probe", 0)]["cost"]["params_trainable"] == 64 * 5 + 5


@pytest.mark.slow
def test_report_shows_meta_test_accuracy_with_its_ci_per_method(digits_sweep):
    root, records = digits_sweep
    result = write_report(root / "results" / "runs" / "digits", root / "out")
    header = result["markdown"].splitlines()[0]
    assert "meta-test acc ± 95% CI" in header and "setting" in header and "tasks" in header
    table = result["table"].set_index("method")
    m = records[("maml", 0)]["metrics"]
    low, high = m["meta_test_ci95"]
    assert table.loc["maml", "meta_test_acc_mean"] == pytest.approx(m["meta_test_acc"])
    assert table.loc["maml", "meta_test_ci95_half"] == pytest.approx((high - low) / 2)
    assert "5-way 1-shot" in result["markdown"] and "| 600 " in result["markdown"]


def test_report_of_a_sweep_without_few_shot_runs_has_no_few_shot_columns(tmp_path):
    from .test_report_claim import full_runs, write_run

    sweep = tmp_path / "runs" / "s"
    full_runs(sweep, [0.80, 0.82])
    write_run(sweep, "lora", 0, 0.7)
    header = write_report(sweep)["markdown"].splitlines()[0]
    assert "meta-test" not in header and "setting" not in header


def test_wordnet_supersenses_task_has_45_classes_and_known_glosses():
    wordnet_or_skip()
    from tunebench.datasets import load
    from tunebench.datasets.wordnet_supersenses import LEXNAMES, read_glosses, wordnet_folder

    glosses, labels = read_glosses(str(wordnet_folder()))
    assert len(glosses) == 117_659 and len(LEXNAMES) == 45 and set(np.unique(labels)) == set(range(45))
    counts = np.bincount(labels)
    assert counts[LEXNAMES.index("noun.motive")] == 42 and counts[LEXNAMES.index("adj.all")] == 14_435
    index = {g: LEXNAMES[y] for g, y in zip(glosses, labels)}
    assert index["a discrete unit of living matter"] == "noun.Tops"
    able = [g for g in glosses if g.startswith("(usually followed by `to') having the necessary means or skill")]
    assert len(able) == 1 and index[able[0]] == "adj.all"
    task = load(OmegaConf.load(ROOT / "conf" / "data" / "wordnet_supersenses.yaml"))
    assert task.num_classes == 45 and task.classes == LEXNAMES and task.modality == "text"
    per_class = np.bincount(task.test.y, minlength=45)
    assert per_class.min() >= 10 and per_class.max() == 30  # 120 per class sampled, a quarter to test


def test_wordnet_missing_names_the_debian_package(tmp_path):
    from tunebench.datasets.wordnet_supersenses import wordnet_folder

    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        wordnet_folder(tmp_path)


def test_text_few_shot_methods_run_and_claim_pairs_fs_lora_with_fs_full(tmp_path, monkeypatch, tiny_encoder_dir):
    wordnet_or_skip()
    for method in ("fs_lora", "fs_full"):
        for seed in (0, 1):
            cfg = compose_cfg(tmp_path, monkeypatch, f"model.name={tiny_encoder_dir}", f"method={method}", f"seed={seed}", *TEXT)
            assert run_cell(cfg) == "ok", (method, seed)
    for method, extra in (("maml", ["method.iterations=5", "method.meta_batch=2"]), ("fs_probe", [])):
        cfg = compose_cfg(tmp_path, monkeypatch, f"model.name={tiny_encoder_dir}", f"method={method}", *TEXT, *extra)
        assert run_cell(cfg) == "ok", method
    records = sweep_records(tmp_path, "t")
    lora, full = records[("fs_lora", 0)], records[("fs_full", 0)]
    assert lora["metrics"]["meta_test_tasks"] == 12 and len(lora["metrics"]["test_correct"]) == 12 * 25
    assert lora["cost"]["params_trainable"] < full["cost"]["params_trainable"] / 5
    assert len(records[("maml", 0)]["metrics"]["fewshot"]["meta_train_classes"]) == 30
    comparisons = check(load_frame(tmp_path / "results" / "runs" / "t"))
    [entry] = comparisons  # maml, fs_probe and fs_full are no PEFT arms (claim_reference: none)
    assert (entry["peft"], entry["reference"], entry["seeds"], entry["ways"], entry["shots"]) == ("fs_lora", "fs_full", [0, 1], 5, 1)
    assert "2 seeds x 12 shared meta-test tasks" in entry["parts"][0]["note"]


def test_claim_interval_counts_few_shot_tasks_not_single_query_predictions():
    import pandas as pd

    from tunebench.app.claim import accuracy_part

    rng = np.random.default_rng(0)
    tasks, per_task = 40, 25

    def arm(p_task):  # every query of a task right or wrong together: the extreme of within-task correlation;
        # the same outcomes in both seeds, so only the shared tasks vary (no seed noise to mask them)
        outcome = np.repeat(rng.random(tasks) < p_task, per_task)
        return pd.DataFrame({"test_acc": [outcome.mean()] * 2, "meta_test_tasks": [tasks] * 2,
                             "test_correct": ["".join("1" if c else "0" for c in outcome)] * 2})

    peft, full = arm(0.5), arm(0.5)
    by_task = accuracy_part(peft, full, margin=1.0)
    assert f"2 seeds x {tasks} shared meta-test tasks" in by_task.note and by_task.ci_low < by_task.estimate < by_task.ci_high
    by_example = accuracy_part(peft.drop(columns="meta_test_tasks"), full.drop(columns="meta_test_tasks"), margin=1.0)
    assert f"2 seeds x {tasks * per_task} shared test examples" in by_example.note
    # 25 perfectly correlated predictions per task carry the information of one: the CI is ~5x wider
    # (a little more: 39 task-level df against 999 example-level df)
    ratio = (by_task.ci_high - by_task.ci_low) / (by_example.ci_high - by_example.ci_low)
    assert ratio == pytest.approx(np.sqrt(per_task), rel=0.25)


def test_encoder_methods_refuse_images_and_training_split_refinements(tmp_path, monkeypatch):
    cfg = compose_cfg(tmp_path, monkeypatch, *DIGITS, "method=fs_lora")
    assert run_cell(cfg) == "failed"
    cfg = compose_cfg(tmp_path, monkeypatch, *DIGITS, "method=fs_probe", "refine=validated")
    assert run_cell(cfg) == "failed"
    messages = sorted(r["error"]["message"] for r in iter_records(tmp_path / "results" / "runs" / "t"))
    assert "method 'fs_lora' fine-tunes text tasks; data=digits has modality 'image'" in messages[0]
    assert "method=fs_probe adapts on each meta-test task's support set only" in messages[1]
    assert "refine=validated would change nothing" in messages[1]
