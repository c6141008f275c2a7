"""Federated cells (bench/core/federated.py): Flower clients train through the shared engine, the server
aggregates what they trained. End-to-end runs go through the CLI and Flower's Ray simulation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tunebench.core import federated as fed
from tunebench.core.engine import batch_order

from .conftest import IN_PROCESS, TINY, run_tunebench

FED = ["federated.strategy=fedavg", "federated.rounds=1"]
# Two clients on one Ray actor (2 CPUs each, 2 available): they train one after the other in a process that imports
# torch / transformers / peft once instead of twice. Tests of what clients do, not of how many run at once.
ONE_ACTOR = "federated.client_cpus=2"


def records(root: Path, sweep: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "results" / "runs" / sweep).glob("*.json"))]


def tensor_bytes(path: Path) -> int:
    with safe_open(str(path), "pt") as f:
        return sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())


# -- end to end ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_client_one_round_trains_exactly_the_centralised_run(tmp_path):
    """Same data order, same RNG stream, same lr schedule: the adapter after 1 client x 1 round x 4 steps is
    the centralised run's after 4 steps (up to float summation order: the client trains on 1 thread)."""
    args = ["run", "-m", "method=lora", "seed=0", *TINY, "train.evals=1", "save_model=true", f"paths.models={tmp_path}/models",
            "federated.strategy=none,fedavg", "federated.clients=1", "federated.rounds=1", "federated.local_steps=4",
            IN_PROCESS, "sweep=same"]
    out = run_tunebench(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    by = {r["config"]["federated"]["strategy"]: r for r in records(tmp_path, "same")}
    central, federated = by["none"], by["fedavg"]
    assert central["metrics"]["steps"] == federated["metrics"]["steps"] == 4
    assert central["metrics"]["test_correct"] == federated["metrics"]["test_correct"]
    assert central["metrics"]["best_val_acc"] == pytest.approx(federated["metrics"]["best_val_acc"])
    with safe_open(central["saved_model"] + "/adapter_model.safetensors", "pt") as a, \
            safe_open(federated["saved_model"] + "/adapter_model.safetensors", "pt") as b:
        assert set(a.keys()) == set(b.keys())
        start = {k: a.get_tensor(k) for k in a.keys()}
        for key in a.keys():
            assert (a.get_tensor(key) - b.get_tensor(key)).abs().max().item() < 1e-4, key
    assert any(t.abs().max().item() > 1e-3 for t in start.values())  # trained weights, not zeros on both sides


@pytest.mark.slow
def test_peft_sends_only_the_adapter_and_full_fine_tuning_every_weight(tmp_path):
    """Bytes both ways per round = what the arm trains x clients. The same runs check two things that leave
    the traffic unchanged: Flower's central DP states epsilon at the configured delta, and each client
    refines its own share (WordNet variants) and reports counts, not its sentences."""
    args = ["run", "-m", "method=full,lora", "seed=0", *TINY, *FED, "federated.clients=2", ONE_ACTOR, "federated.local_steps=1",
            "federated.dp.noise_multiplier=1.0", "federated.dp.clipping_norm=0.5",
            "refine=augmented", "refine.augmented.augmenter=wordnet", "refine.augmented.filter=false",
            "save_model=true", f"paths.models={tmp_path}/models", IN_PROCESS, "sweep=bytes"]
    out = run_tunebench(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    by = {r["config"]["method"]["name"]: r for r in records(tmp_path, "bytes")}
    lora, full = by["lora"]["cost"], by["full"]["cost"]
    adapter = tensor_bytes(Path(by["lora"]["saved_model"]) / "adapter_model.safetensors")  # what peft saves
    assert lora["comm_bytes_per_client_round"] == adapter == 4 * lora["params_trainable"]
    assert lora["comm_bytes_down"] == lora["comm_bytes_up"] == 2 * adapter  # 2 clients, 1 round, each way
    assert full["comm_bytes_per_client_round"] == 4 * full["params_total"]  # every weight of MiniLM, fp32
    assert full["comm_bytes_down"] == full["comm_bytes_up"] == 2 * 4 * full["params_total"]
    assert full["comm_bytes_total"] / lora["comm_bytes_total"] > 200
    rounds = by["lora"]["engine"]["federated"]["rounds_detail"]
    assert [(r["clients"], r["replies"], r["failures"]) for r in rounds] == [(2, 2, 0)]
    assert sum(c["examples"] for c in by["lora"]["engine"]["federated"]["clients_data"]) == 64
    clients = [c["peak_memory_bytes"] for r in by["full"]["engine"]["federated"]["rounds_detail"] for c in r["clients_detail"]]
    assert full["peak_memory_bytes"] == max(clients) and full["peak_memory_server_mb"] > 0
    from tunebench.app.html_report import write_html  # the page's federated panel and its traffic columns

    page = write_html(tmp_path / "results" / "runs" / "bytes", tmp_path / "report.html").read_text()
    assert "<h2>Federated</h2>" in page and 'id="fig-federated"' in page and "sent MB total" in page
    shares = [c["examples"] for c in by["lora"]["engine"]["federated"]["clients_data"]]
    [refined] = by["lora"]["refinements"]
    assert refined["at"] == "clients" and len(refined["clients"]) == 2
    for share, [report] in zip(shares, refined["clients"]):
        assert report["name"] == "augmented" and report["augmented_examples"] == share and "examples" in report["withheld"]
        assert share // 2 < report["kept"] <= share  # one variant per sentence, less those WordNet left unchanged
    trained_on = {c["partition-id"]: c["num-examples"] for c in rounds[0]["clients_detail"]}
    assert trained_on == {k: shares[k] + refined["clients"][k][0]["kept"] for k in (0, 1)}  # the refined share
    # epsilon of 1 Gaussian release at noise multiplier 1, client level, delta 1e-5 (dp_accounting directly)
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(1.0), 1)
    for record in by.values():
        privacy = record["engine"]["federated"]["privacy"]
        assert privacy["releases"] == 1 and privacy["delta"] == 1e-5
        assert record["metrics"]["dp_epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-6)


@pytest.mark.slow
def test_a_client_that_raises_fails_the_cell_and_is_named(tmp_path):
    args = ["run", "method=lora", "seed=0", *TINY, *FED, "federated.clients=2", ONE_ACTOR, "federated.local_steps=1", "sweep=fail"]
    ray_dirs = set(Path("/tmp").glob("tb-ray-*"))
    out = run_tunebench(args, tmp_path, env_extra={"TUNEBENCH_FEDERATED_FAIL": "1"})
    assert out.returncode != 0
    [record] = records(tmp_path, "fail")
    assert record["status"] == "failed"
    message = record["error"]["message"]
    assert "round 1: 1 of 2 sampled clients replied" in message
    assert "client 1, round 1: RuntimeError: raised on purpose" in message
    assert "metrics" not in record or not record["metrics"]
    assert set(Path("/tmp").glob("tb-ray-*")) == ray_dirs  # Ray's session folder is removed, failed or not
    # the client's traceback printed once (it was four times: Flower's console and Hydra's, exception and traceback)
    assert (out.stdout + out.stderr).count('raise RuntimeError("raised on purpose') == 1, out.stdout + out.stderr


def test_flower_messages_are_printed_once_and_a_client_traceback_once(capsys):
    """What Flower's simulation logs for a failed client (its vce worker: the exception, then the traceback that
    embeds it), with the run's own root handler configured as Hydra does: one line each, the repeat dropped."""
    import logging
    import sys

    from flwr.common.logger import log

    from tunebench.core.federated import flower_logging

    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stdout)
    root.addHandler(handler)
    flower = logging.getLogger("flwr")
    before = (flower.level, list(flower.handlers))
    try:
        with flower_logging():
            log(logging.WARNING, "fraction_evaluate is set to 0.0")
            log(logging.INFO, "[ROUND 1]")
            log(logging.ERROR, "ray::ClientAppActor.run() ... Exception ClientAppException occurred. Message: client 1")
            log(logging.ERROR, "Traceback (most recent call last):\n ... ClientAppException: ... Message: client 1")
    finally:
        root.removeHandler(handler)
    output = capsys.readouterr()
    text = output.out + output.err
    assert text.count("fraction_evaluate is set to 0.0") == 1
    assert "[ROUND 1]" not in text
    assert text.count("Message: client 1") == 1 and "Traceback" not in text
    assert (flower.level, list(flower.handlers)) == before  # Flower's logger as it was after the simulation


@pytest.mark.slow
def test_a_preempted_federated_run_resumes_at_its_next_round_and_trains_the_same_model(tmp_path, monkeypatch, tiny_bert_dir):
    """FedAdam (its moments are the strategy's state), 2 clients whose dropout draws from their own RNG streams,
    3 rounds: preempted in round 1, the requeued cell trains rounds 2 and 3 only and ends where the
    uninterrupted run ends. In the test's process (run_cell), like the other families' resume test."""
    import os
    import signal

    from tunebench.app.runner import run_cell

    from .test_checkpoint import run_until_requeued
    from .test_runner import compose_cfg, records as cell_records

    overrides = [f"model.name={tiny_bert_dir}", "method=lora", "federated.strategy=fedadam", "federated.clients=2", ONE_ACTOR,
                 "federated.rounds=3", "federated.local_steps=2", "train.batch_size=8", "save_model=true",
                 "train.select_best=false"]  # the last round's model, not the best (round 1 on this random model)
    assert run_cell(compose_cfg(tmp_path / "ref", monkeypatch, *overrides, f"paths.models={tmp_path}/ref-models")) == "ok"
    [uninterrupted] = cell_records(tmp_path / "ref")

    rounds_sent, real_send = [], fed.CountingGrid.send_and_receive

    def send_then_maybe_signal(self, messages, *, timeout=None):
        messages = list(messages)
        if messages:  # a training round (the strategy's federated evaluation sends none: fraction_evaluate 0)
            rounds_sent.append(1)
            if len(rounds_sent) == signal_in_round:  # like `scancel --signal=USR1` while the clients train
                os.kill(os.getpid(), signal.SIGUSR1)
        return real_send(self, messages, timeout=timeout)

    monkeypatch.setattr(fed.CountingGrid, "send_and_receive", send_then_maybe_signal)
    signal_in_round = 1
    cfg = compose_cfg(tmp_path, monkeypatch, *overrides, f"paths.models={tmp_path}/models")
    run_until_requeued(cfg)
    assert len(rounds_sent) == 1 and not cell_records(tmp_path)  # no record: the job was requeued
    checkpoint = tmp_path / "results" / "checkpoints" / "t" / uninterrupted["run_id"] / "train.pt"
    assert checkpoint.exists()

    rounds_sent.clear()
    signal_in_round = 0
    assert run_cell(cfg) == "ok"
    [resumed] = cell_records(tmp_path)
    assert len(rounds_sent) == 2 and resumed["resumed_from_step"] == 2 and uninterrupted["resumed_from_step"] == 0
    assert [p["round"] for p in resumed["curve"]] == [1, 2, 3]
    for key in ("val_acc", "val_macro_f1"):
        assert [p[key] for p in resumed["curve"]] == [p[key] for p in uninterrupted["curve"]], key
    assert resumed["metrics"]["test_correct"] == uninterrupted["metrics"]["test_correct"]
    assert resumed["metrics"]["test_macro_f1"] == pytest.approx(uninterrupted["metrics"]["test_macro_f1"], abs=1e-12)
    done, again = (r["engine"]["federated"]["rounds_detail"] for r in (uninterrupted, resumed))
    assert [(r["clients"], r["replies"], r["bytes_up"]) for r in again] == [(r["clients"], r["replies"], r["bytes_up"]) for r in done]
    assert resumed["cost"]["comm_bytes_total"] == uninterrupted["cost"]["comm_bytes_total"]
    assert not checkpoint.exists()  # removed once the record is written
    with safe_open(uninterrupted["saved_model"] + "/adapter_model.safetensors", "pt") as a, \
            safe_open(resumed["saved_model"] + "/adapter_model.safetensors", "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():  # bit for bit: the same RNG draws (dropout), strategy state and data order
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key


# -- units --------------------------------------------------------------------------------------------
def settings(**values) -> fed.FederatedSettings:
    return fed.FederatedSettings.from_config({"strategy": "fedavg", **values})


def test_iid_partitions_are_disjoint_cover_the_split_and_mix_the_classes():
    labels = np.repeat([0, 1], 100)  # stored by class, as some splits are
    parts = fed.partition(labels, settings(clients=4), seed=0)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(200))
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted indices
    assert all(0.3 < labels[p].mean() < 0.7 for p in parts)  # shuffled before cutting: both classes everywhere


def test_dirichlet_with_a_small_alpha_gives_clients_skewed_classes_and_is_seeded():
    labels = np.tile(np.arange(4), 100)
    skewed = fed.partition(labels, settings(clients=4, partition="dirichlet", alpha=0.1), seed=0)
    again = fed.partition(labels, settings(clients=4, partition="dirichlet", alpha=0.1), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(skewed, again))
    top_share = [np.bincount(labels[p], minlength=4).max() / len(p) for p in skewed]
    assert np.mean(top_share) > 0.6  # iid would be ~0.25
    assert sorted(np.concatenate(skewed).tolist()) == list(range(400))


def test_one_client_draws_the_centralised_batches_round_after_round():
    indices = np.arange(50)
    central = batch_order(50, 8, 3, seed=4)
    drawn = [b for r in (1, 2, 3) for b in fed.client_batches(indices, 8, r, 5, seed=4)]
    assert all(np.array_equal(a, b) for a, b in zip(drawn, central[:15]))
    other = fed.client_batches(np.arange(100, 150), 8, 1, 5, seed=4)
    assert all(np.array_equal(a + 100, b) for a, b in zip(central[:5], other))  # a client's own indices


@pytest.mark.parametrize("key, value, expected", [
    ("clients", 0, "federated.clients=0: expected a whole number >= 1"),
    ("fraction", 1.5, "federated.fraction=1.5: expected a number in (0, 1]"),
    ("partition", "shards", "federated.partition='shards': expected iid | dirichlet"),
    ("strategy", "fedmagic", "federated.strategy='fedmagic': not a Flower strategy; expected none or one of"),
    ("rounds_", 2, "federated.rounds_: unknown key"),
])
def test_bad_federated_settings_name_the_key_and_what_was_expected(key, value, expected):
    with pytest.raises(ValueError) as error:
        settings(**{key: value})
    assert expected in str(error.value)


def test_strategies_are_flowers_own_classes():
    from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

    assert fed.strategy_class("fedavg") is FedAvg
    assert fed.strategy_class("fedprox") is FedProx
    assert fed.strategy_class("fedadam") is FedAdam


def test_a_federated_checkpoint_is_due_by_the_engines_rule_over_each_rounds_steps(tmp_path):
    """5 rounds of 10 local steps: every 15 steps saves after rounds 2 (step 15) and 3 (step 30); at evaluations, after
    every round; never after the last (the record follows); 0 only when preempted."""
    from tunebench.core.checkpoint import AT_EVALS, RunCheckpoint

    def due_rounds(every):
        checkpoints = fed.RoundCheckpoint(RunCheckpoint(tmp_path / "train.pt", every), settings(rounds=5, local_steps=10))
        return [r for r in range(1, 6) if checkpoints.due(r)]

    assert due_rounds(15) == [2, 3]
    assert due_rounds(AT_EVALS) == [1, 2, 3, 4]
    assert due_rounds(0) == []


def test_a_checkpoint_of_another_run_shape_is_refused_naming_the_file(tmp_path):
    from tunebench.core.checkpoint import RunCheckpoint

    file = RunCheckpoint(tmp_path / "train.pt")
    file.save({"step": 3, "n_steps": 8})  # a central run's checkpoint
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path / 'train.pt'} is not one of a federated run of 5 rounds "
                                         r"\(it has no rounds\); delete it to start over"):
        fed.RoundCheckpoint(file, settings(rounds=5)).load()


def test_a_checkpointed_dp_strategy_keeps_the_privacy_it_has_spent():
    """A checkpoint pickles the strategy object: the DP wrapper's accountant must come back with its releases."""
    import pickle

    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

    strategy = fed.build_strategy(settings(clients=4, dp={"noise_multiplier": 1.0, "clipping_norm": 0.5}))
    for _ in range(3):
        strategy.accountant.compose(GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=4, population_size=4))
    restored = pickle.loads(fed.dump_strategy(strategy))
    spent, back = strategy.privacy_spent(), restored.privacy_spent()
    assert back.num_releases == spent.num_releases == 3
    assert back.epsilon == spent.epsilon > 0 and back.delta == spent.delta == 1e-5
    event = GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=4, population_size=4)
    restored.accountant.compose(event), strategy.accountant.compose(event)  # and it goes on accounting
    assert restored.privacy_spent().epsilon == strategy.privacy_spent().epsilon > spent.epsilon


def test_a_resumed_strategy_counts_the_rounds_of_the_run():
    """After a resume Flower's `start` counts from 1 again; the strategy (FedAdam's bias correction, the clients'
    `server-round`) must see the run's rounds."""
    from flwr.serverapp.strategy import FedAvg

    seen = []

    class Recording(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):
            seen.append(("train", server_round))
            return []

        def aggregate_train(self, server_round, replies):
            seen.append(("aggregate", server_round))
            return None, None

    inner = Recording()
    later = fed.rounds_after(inner, 3)
    later.configure_train(1, None, None, None), later.aggregate_train(1, [])
    assert seen == [("train", 4), ("aggregate", 4)]
    assert fed.rounds_after(inner, 0) is inner


def test_the_reason_of_a_failed_client_is_its_own_message():
    text = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m\n"
            "Exception ClientAppException occurred. Message: client 3, round 2: ValueError: bad batch'>")
    assert fed._reason(text) == "client 3, round 2: ValueError: bad batch"


def test_a_client_reports_its_refinement_in_counts_and_withholds_its_examples():
    report = {"name": "validated", "flagged": 3, "per_class": {"0": 1, "1": 2}, "kept_per_class": [5, 6],
              "examples": [["a sentence", "its variant"]], "issues": [{"row": 4, "text": "a sentence"}]}
    told = fed.counts_only(report)
    assert told == {"name": "validated", "flagged": 3, "per_class": {"0": 1, "1": 2}, "kept_per_class": [5, 6],
                    "withheld": ["examples", "issues"]}


def test_clients_ask_ray_for_this_process_cpus_and_refuse_gpus_it_does_not_have():
    import os

    cpus, gpus, per_client = fed._resources(settings(), "cpu")
    assert (cpus, gpus, per_client) == (min(4, len(os.sched_getaffinity(0))), 0, 0.0)
    assert fed._resources(settings(clients=1), "cpu")[0] == 1  # one client: one actor, no idle one
    with pytest.raises(ValueError, match="client_gpus=1: this process sees 0 GPU"):
        fed._resources(settings(client_gpus=1), "cpu")


def test_a_family_without_a_federated_path_refuses_and_names_the_way_out():
    from tunebench.app.runner import _fit
    from tunebench.core.configs import compose_group
    from tunebench.methods import method_for

    method = method_for(compose_group("method", "cl_naive"))  # Avalanche's own loop
    with pytest.raises(ValueError, match="method=cl_naive has no federated path .* run it with federated.strategy=none"):
        _fit(method, None, None, settings(), False, None, None, "cpu")
