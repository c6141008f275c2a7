import torch

from tunebench.core.meter import CostMeter, parameter_counts, training_state_bytes


def small_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 3))
    for p in model[0].parameters():
        p.requires_grad_(False)
    return model


def test_parameter_counts_exclude_the_named_head():
    counts = parameter_counts(small_model(), head_prefixes=("2.",))
    assert counts["params_total"] == 10 * 20 + 20 + 20 * 3 + 3
    assert counts["params_trainable"] == 63
    assert counts["params_trainable_excl_head"] == 0
    assert abs(counts["trainable_pct"] - 100 * 63 / 283) < 1e-9


def test_training_state_bytes_are_exact_for_adamw():
    model = small_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model(torch.randn(4, 10)).sum().backward()
    optimizer.step()
    state = training_state_bytes(model, optimizer)
    assert state["param_bytes"] == 283 * 4
    assert state["grad_bytes"] == 63 * 4
    # AdamW keeps exp_avg and exp_avg_sq per trainable tensor plus a float32 step counter each.
    assert state["optimizer_state_bytes"] == 2 * 63 * 4 + 2 * 4
    assert state["training_state_bytes"] == 283 * 4 + 63 * 4 + 2 * 63 * 4 + 8


def allocate_and_free(mib: int) -> None:
    block = torch.ones(mib * 2**20 // 4)  # float32
    block.add_(1)
    del block


def test_peak_memory_is_measured_over_the_runs_own_baseline_even_in_a_shared_process():
    peaks = []
    for _ in range(3):  # the same work three times in one process, as Hydra's basic launcher does
        meter = CostMeter("cpu").start()
        allocate_and_free(256)
        meter.stop()
        peaks.append(meter.summary()["peak_memory_mb"])
    assert all(240 <= p <= 300 for p in peaks), peaks
    idle = CostMeter("cpu").start()
    idle.stop()
    assert idle.summary()["peak_memory_mb"] < 20


def test_phases_and_throughput():
    meter = CostMeter("cpu")
    with meter.phase("train"):
        sum(range(200000))
    meter.add_train_samples(64)
    summary = meter.summary()
    assert summary["train_seconds"] > 0 and summary["eval_seconds"] == 0
    assert abs(summary["samples_per_second"] - 64 / meter.times["train"]) < 1e-6 * summary["samples_per_second"] + 1e-3


def test_cpu_seconds_count_work_not_waiting_and_combine_like_wall_seconds():
    """Waiting (a sleep here; another cell holding the core under launcher=parallel) stretches wall seconds but
    not CPU seconds; work counts in both."""
    import time

    from tunebench.core.meter import combine_ranks

    meter = CostMeter("cpu")
    with meter.phase("eval"):
        time.sleep(0.4)
    with meter.phase("train"):
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
    summary = meter.summary()
    assert summary["eval_seconds"] >= 0.4 and summary["eval_cpu_seconds"] < 0.05
    assert 0.3 <= summary["train_cpu_seconds"] <= summary["train_seconds"] + 0.01
    other = {**summary, "train_cpu_seconds": 0.9}
    assert combine_ranks([summary, other])["train_cpu_seconds"] == 0.9  # the slowest rank, as wall seconds
    meter.cpu_measured = False  # part of the work ran elsewhere (federated clients, an old checkpoint)
    assert "train_cpu_seconds" not in meter.summary()
    assert "train_cpu_seconds" not in combine_ranks([summary, meter.summary()])
