"""Multi-process training (bench/core/distributed.py) on this CPU: 2 processes, gloo, started by torchrun
through `train.processes=2`, the same code path as torchrun / SLURM tasks on a GPU cluster."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_tunebench
from tunebench.core import distributed as dp
from tunebench.core.engine import Engine, TrainJob, TrainSettings
from tunebench.core.meter import CostMeter, combine_ranks


@pytest.fixture(scope="module")
def tiny_bert_no_dropout(tmp_path_factory) -> Path:
    """A 2-layer random BERT without dropout: with dropout, one process and two draw different masks."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tunebench.core.models import resolve_source

    out = tmp_path_factory.mktemp("tiny-bert-nodrop")
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("minilm")[0], local_files_only=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _args(model_dir: Path, *extra: str) -> list[str]:
    return ["run", "logger=none", "model=hf", f"model.name={model_dir}", "data.train_size=64", "data.validation_size=32",
            "data.test_size=64", "train.batch_size=16", "train.evals=2", "save_model=true", *extra]


def _records(root: Path, sweep: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "results" / "runs" / sweep).glob("*.json"))]


def _weights(root: Path, sweep: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (folder,) = (root / "results" / "models" / sweep).iterdir()
    (file,) = [p for p in folder.glob("*.safetensors")]
    return load_file(str(file))


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float(a[k].abs().max()) for k in a)
    assert moved > 0.01  # the comparison is of trained weights, not of zeros
    assert worst < 1e-5, f"largest difference between 1 and 2 processes: {worst}"


@pytest.mark.slow
@pytest.mark.parametrize("method", [["method=lora", "method.peft.lora_dropout=0"], ["method=full", "method.lr=1e-3"]],
                         ids=["lora", "full"])
def test_two_process_ddp_trains_the_same_weights_as_one_process(tmp_path, tiny_bert_no_dropout, method):
    """DDP on the default task (Rotten Tomatoes). 61 examples in global batches of 15: 8 + 7 per rank, each
    split by 2 accumulation steps into unequal micro-batches; the last batch has one example, so rank 1
    has none (it joins the all-reduce at weight 0)."""
    common = [*method, "data.train_size=61", "train.batch_size=15", "train.grad_accum_steps=2"]
    one = run_tunebench(_args(tiny_bert_no_dropout, *common, "sweep=one"), tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_tunebench(_args(tiny_bert_no_dropout, *common, "sweep=two", "train.processes=2"), tmp_path)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    _assert_same_weights(_weights(tmp_path, "one"), _weights(tmp_path, "two"))
    (single,), (record,) = _records(tmp_path, "one"), _records(tmp_path, "two")  # rank 0 alone wrote a record
    assert record["status"] == "ok" and record["metrics"]["steps"] == 5
    assert record["metrics"]["test_correct"] == single["metrics"]["test_correct"]  # evaluation gathered in data order
    assert record["metrics"]["best_val_acc"] == single["metrics"]["best_val_acc"]
    assert record["engine"]["distributed"] == {"mode": "ddp", "ranks": 2, "backend": "gloo", "launcher": "torchrun",
                                               "global_batch": 15, "per_rank_batch": 7.5, "grad_accum_steps": 2,
                                               "micro_batch": 3.75}
    cost = record["cost"]
    assert cost["ranks"] == cost["devices"] == 2 and len(cost["peak_memory_bytes_per_rank"]) == 2
    assert cost["peak_memory_bytes"] == max(cost["peak_memory_bytes_per_rank"])
    assert cost["train_samples"] == single["cost"]["train_samples"] == 61  # the global count, not a rank's
    assert cost["training_state_bytes"] == single["cost"]["training_state_bytes"]  # DDP: a full replica per device
    # Never pooled with the one-process run, and the report says how many devices ran it.
    from tunebench.app.frame import load_frame

    frames = [load_frame(tmp_path / "results" / "runs" / sweep) for sweep in ("one", "two")]
    assert frames[0].comparison.iloc[0] != frames[1].comparison.iloc[0]
    assert frames[1].ranks.iloc[0] == 2 and frames[1].device_seconds.iloc[0] == cost["device_seconds"]
    report = run_tunebench(["report", "results/runs/two"], tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    header = (tmp_path / "results" / "tables" / "two" / "results.md").read_text().splitlines()[0]
    assert [c.strip() for c in header.split("|")[-3:-1]] == ["ranks", "device s"]


@pytest.mark.slow
def test_a_two_process_fsdp_run_killed_midway_resumes_from_its_sharded_checkpoint_to_the_same_results(
        tmp_path, tiny_llama_dir):
    """Full fine-tuning of a causal LM (a tiny Llama) sharded over 2 processes (FSDP units: its decoder
    layers; weights, gradients and Adam state sharded) with a sharded checkpoint every 2 steps; rank 1 dies
    at step 3; the same command resumes from step 2 and ends with the weights, exact-match scores and
    test loss of an uninterrupted one-process run (generation runs every decoding step on every rank)."""
    common = ["logger=none", "model=hf", f"model.name={tiny_llama_dir}", "data=arithmetic", "data.train_size=64",
              "data.validation_size=8", "data.test_size=12", "data.max_new_tokens=6", "train.batch_size=16",
              "train.max_steps=4", "train.evals=2", "train.checkpoint_every=2", "method=full", "method.lr=1e-3",
              "save_model=true"]
    assert run_tunebench(["run", *common, "sweep=one"], tmp_path).returncode == 0
    two = ["run", *common, "sweep=two", "train.processes=2", "train.distributed=fsdp"]
    killed = run_tunebench(two, tmp_path, env_extra={dp.FAULT_ENV: "rank=1,step=3,kind=kill"})
    assert killed.returncode == 1
    (died,) = _records(tmp_path, "two")
    # Rank 0 either records that its peer went away (a collective failed) or is stopped by torchrun first
    # (then the parent records that the cell's processes died); either way the checkpoint stays.
    assert died["status"] == "failed"
    assert died["error"]["type"] == "CellProcessDied" or (died["error"]["rank"] == 0 and died["error"]["checkpoint_kept"])
    checkpoint = tmp_path / "results" / "checkpoints" / "two" / died["run_id"]
    assert (checkpoint / "train.pt").exists() and (checkpoint / "train.pt.dcp").is_dir()  # the plain part, the shards
    resumed = run_tunebench(two, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resuming from step 2/4" in resumed.stdout
    (single,), (record,) = _records(tmp_path, "one"), _records(tmp_path, "two")
    assert record["status"] == "ok" and record["resumed_from_step"] == 2
    assert record["engine"]["distributed"]["mode"] == "fsdp"
    _assert_same_weights(_weights(tmp_path, "one"), _weights(tmp_path, "two"))
    assert record["metrics"]["test_correct"] == single["metrics"]["test_correct"]
    for key in ("test_loss", "best_val_acc"):
        assert record["metrics"][key] == pytest.approx(single["metrics"][key], rel=1e-5), key
    per_rank = record["cost"]["training_state_bytes_per_rank"]  # each rank holds half of weights, gradients, Adam state
    assert sum(per_rank) == pytest.approx(single["cost"]["training_state_bytes"], rel=0.01)
    assert max(per_rank) < 0.55 * single["cost"]["training_state_bytes"]
    assert not checkpoint.exists()  # the record is final: the checkpoint is gone


@pytest.mark.slow
def test_a_rank_that_raises_fails_its_cell_with_one_record_and_the_sweep_goes_on(tmp_path, tiny_bert_no_dropout):
    """Rank 1 raises at step 3: that cell (4 steps) ends as one `failed` record naming rank 1 and its
    error; the next cell of the sweep (2 steps, never reaches step 3) runs and is ok."""
    run, *args = _args(tiny_bert_no_dropout, "method=lora", "train.processes=2", "train.distributed=fsdp",
                       "train.max_steps=4,2", "train.evals=1", "sweep=faults")  # FSDP with a peft adapter inside its units
    result = run_tunebench([run, "-m", *args], tmp_path, timeout=600, env_extra={dp.FAULT_ENV: "rank=1,step=3"})
    assert result.returncode == 1, result.stdout[-3000:]  # a sweep with a failed cell says so in its exit code
    records = {r["config"]["train"]["max_steps"]: r for r in _records(tmp_path, "faults")}
    assert set(records) == {4, 2}
    failed, ok = records[4], records[2]
    assert failed["status"] == "failed" and ok["status"] == "ok"
    assert failed["error"]["rank"] == 1 and failed["error"]["ranks"] == 2
    assert "rank 1 of 2" in failed["error"]["message"] and "rehearsed fault" in failed["error"]["message"]
    assert "2 cells: 1 ok, 1 failed" in result.stdout
    assert ok["engine"]["distributed"]["mode"] == "fsdp" and (tmp_path / "results" / "models" / "faults" / ok["run_id"]
                                                             / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_a_rank_that_hangs_makes_the_other_fail_on_the_collective_timeout(tmp_path, tiny_bert_no_dropout):
    result = run_tunebench(_args(tiny_bert_no_dropout, "method=lora", "train.processes=2", "train.dist_timeout_s=5",
                                 "sweep=hang"), tmp_path, timeout=300, env_extra={dp.FAULT_ENV: "rank=1,step=1,kind=hang"})
    assert result.returncode == 1
    (record,) = _records(tmp_path, "hang")
    assert record["status"] == "failed" and record["error"]["rank"] == 0
    assert "train.dist_timeout_s=5" in record["error"]["message"] and "another rank stopped answering" in record["error"]["message"]


# -- the pieces ---------------------------------------------------------------------------------------------
def test_shard_gives_each_rank_a_strided_share_and_an_empty_rank_a_placeholder():
    items = np.arange(15)
    shares = [dp.shard(items, dp.Ranks(rank=r, world=2, mode="ddp")) for r in (0, 1)]
    assert shares[0] == (pytest.approx([0, 2, 4, 6, 8, 10, 12, 14]), True)
    assert shares[1][0].tolist() == [1, 3, 5, 7, 9, 11, 13] and shares[1][1]
    lone, counts = dp.shard(np.arange(1), dp.Ranks(rank=1, world=2, mode="ddp"))
    assert lone.tolist() == [0] and not counts  # takes part in the all-reduce, adds nothing
    assert dp.shard(items, dp.SINGLE) == (items, True)


def test_evaluation_shares_are_equally_long_and_gather_back_in_the_data_order(monkeypatch):
    order = np.array([4, 0, 3, 1, 2])
    shares = []
    for r in (0, 1):
        monkeypatch.setattr(dp, "_current", dp.Ranks(rank=r, world=2, mode="fsdp"))
        shares.append(dp.eval_share(order))
    assert shares[0].tolist() == [4, 3, 2] and shares[1].tolist() == [0, 1, 1]  # the short share repeats its last
    monkeypatch.setattr(dp, "_current", dp.SINGLE)
    assert dp.eval_share(order) is order


def test_a_slurm_batch_script_is_one_process_and_an_srun_task_is_a_rank(monkeypatch):
    """Environments as the local SLURM sets them for `sbatch -n 2`: the batch script has SLURM_NTASKS=2 and
    SLURM_PROCID=0 but is one process (it must not wait for a rank 1); srun's tasks are the ranks."""
    for key in ("RANK", "WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert not dp.is_launched() and dp.launch_rank() == 0 and dp.launcher_name() is None
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert dp.is_launched() and dp.launch_rank() == 1 and dp.launcher_name() == "slurm"


def test_mode_resolution_and_settings_name_what_is_wrong():
    assert dp.resolve_mode("auto", 1) == "none" and dp.resolve_mode("auto", 4) == "ddp"
    assert dp.resolve_mode("fsdp", 2) == "fsdp"
    with pytest.raises(ValueError, match="train.distributed=none, but this cell was started as 2 processes"):
        dp.resolve_mode("none", 2)
    with pytest.raises(ValueError, match=r"train.distributed='zero': expected auto \| none \| ddp \| fsdp"):
        TrainSettings.from_config({"distributed": "zero"})
    with pytest.raises(ValueError, match=r"train.processes=0: expected a whole number >= 1"):
        TrainSettings.from_config({"processes": 0})


def test_a_family_without_a_multi_process_path_is_refused(monkeypatch):
    class Plain(TrainJob):  # e.g. few-shot: no shared evaluation
        net = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)

    monkeypatch.setattr(dp, "_current", dp.Ranks(rank=0, world=2, mode="ddp", backend="gloo"))
    with pytest.raises(ValueError, match="Plain has no multi-process path"):
        Engine(Plain(), 3, TrainSettings.from_config({}), CostMeter())


def test_costs_of_ranks_combine_into_per_device_numbers():
    ranks = [{"train_seconds": 10.0, "eval_seconds": 2.0, "train_samples": 64, "peak_memory_bytes": 100 * 2**20,
              "training_state_bytes": 40},
             {"train_seconds": 12.0, "eval_seconds": 1.0, "train_samples": 64, "peak_memory_bytes": 80 * 2**20,
              "training_state_bytes": 40}]
    out = combine_ranks(ranks)
    assert out["ranks"] == 2 and out["train_seconds"] == 12.0 and out["device_seconds"] == 22.0
    assert out["peak_memory_mb"] == 100.0 and out["peak_memory_bytes_sum"] == 180 * 2**20
    assert out["training_state_bytes"] == 40 and out["training_state_bytes_sum"] == 80
    assert out["samples_per_second"] == pytest.approx(64 / 12, abs=1e-3)
    assert combine_ranks(ranks[:1]) == ranks[0]
