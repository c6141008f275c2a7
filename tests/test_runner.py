"""The runner writes one record per cell: ok, failed (with traceback) or diverged; ok cells skip."""
import json

import pytest
import torch
from hydra import compose, initialize_config_module
from transformers import BertForSequenceClassification

from tunebench.core.record import iter_records
from tunebench.app.runner import run_cell

from .conftest import TINY


def compose_cfg(tmp_path, monkeypatch, *overrides):
    monkeypatch.setenv("TUNEBENCH_RESULTS", str(tmp_path / "results"))
    with initialize_config_module("tunebench.conf", version_base="1.3"):
        return compose("config", overrides=[*TINY, "sweep=t", *overrides])


def records(tmp_path):
    return list(iter_records(tmp_path / "results" / "runs" / "t"))


def test_ok_run_writes_full_record_and_a_rerun_skips(tmp_path, monkeypatch, tiny_bert_dir):
    cfg = compose_cfg(tmp_path, monkeypatch, f"model.name={tiny_bert_dir}", "method=lora")
    assert run_cell(cfg) == "ok"
    [record] = records(tmp_path)
    assert record["status"] == "ok" and record["error"] is None
    cell = record["cell"]
    assert cell.pop("lr") == pytest.approx(3e-3)  # conf/method/lora.yaml
    assert cell == {"task": "rotten_tomatoes", "refine": "none", "method": "lora", "seed": 0, "model": str(tiny_bert_dir)}
    m, c = record["metrics"], record["cost"]
    assert 0.0 <= m["test_acc"] <= 1.0 and len(m["test_correct"]) == 128
    assert m["test_acc"] == pytest.approx(m["test_correct"].count("1") / 128)
    assert m["steps"] == 4 and [p["step"] for p in record["curve"]] == [2, 4]
    assert c["params_trainable"] < c["params_total"] and c["train_samples"] == 64
    assert c["peak_memory_mb"] > 0 and c["saved_bytes"] > 0 and c["training_state_bytes"] > 0
    assert record["task"]["sizes"] == {"train": 64, "validation": 64, "test": 128, "pool": 64}
    assert record["env"]["packages"]["peft"] == "0.21.2"
    assert run_cell(cfg) == "skipped"
    cfg.force = True
    assert run_cell(cfg) == "ok"
    assert len(records(tmp_path)) == 1


def test_same_seed_same_numbers(tmp_path, monkeypatch, tiny_bert_dir):
    cfg = compose_cfg(tmp_path, monkeypatch, f"model.name={tiny_bert_dir}", "method=full", "force=true")
    run_cell(cfg)
    first = records(tmp_path)[0]["metrics"]
    run_cell(cfg)
    second = records(tmp_path)[0]["metrics"]
    assert first["test_correct"] == second["test_correct"] and first["best_val_acc"] == second["best_val_acc"]


def test_failing_cell_writes_failed_record_with_traceback(tmp_path, monkeypatch):
    cfg = compose_cfg(tmp_path, monkeypatch, "data=files", "data.train=missing.csv")
    assert run_cell(cfg) == "failed"
    [record] = records(tmp_path)
    assert record["status"] == "failed"
    assert record["error"]["type"] == "DataError"
    assert "missing.csv" in record["error"]["message"] and "Traceback" in record["error"]["traceback"]


def test_unknown_method_implementation_fails_listing_implementations(tmp_path, monkeypatch):
    cfg = compose_cfg(tmp_path, monkeypatch, "method.impl=nosuch")
    assert run_cell(cfg) == "failed"
    message = records(tmp_path)[0]["error"]["message"]
    assert "unknown method 'nosuch'" in message and "peft" in message and "full" in message


def test_nan_loss_ends_the_run_as_diverged(tmp_path, monkeypatch, tiny_bert_dir):
    broken = tmp_path / "nan-bert"
    net = BertForSequenceClassification.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        net.bert.embeddings.word_embeddings.weight.fill_(float("nan"))
    net.save_pretrained(broken)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_bert_dir / name).exists():
            (broken / name).write_bytes((tiny_bert_dir / name).read_bytes())
    cfg = compose_cfg(tmp_path, monkeypatch, f"model.name={broken}", "method=full")
    assert run_cell(cfg) == "diverged"
    [record] = records(tmp_path)
    assert record["status"] == "diverged" and "non-finite training loss nan at step 1" in record["error"]["message"]
    json.dumps(record)  # still valid JSON


def test_count_only_records_parameters_without_training(tmp_path, monkeypatch, tiny_bert_dir):
    cfg = compose_cfg(tmp_path, monkeypatch, f"model.name={tiny_bert_dir}", "method=prefix", "count_only=true")
    assert run_cell(cfg) == "ok"
    [record] = records(tmp_path)
    assert record["metrics"] == {} and record["cost"]["params_trainable_excl_head"] == 10 * 2 * 2 * 32
