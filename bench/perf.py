"""`tunebench perf`: harness overhead and LoRA / full step time, measured in one process.

Times the same LoRA training steps (same model, same batches, same optimiser and schedule) through
the harness's training loop (cost meter, progress bar, NaN checks, data collation) and through a
minimal hand-written PyTorch loop, alternating the two over several rounds; reports the ratio of
median round times (goal <= 1.03). Then times full fine-tuning steps through the harness for the
LoRA / full step-time ratio. A benchmark, not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from tunebench.checkpoint import RunCheckpoint
from tunebench.meter import CostMeter


def _setup(method_name: str, steps: int, batch_size: int, seed: int):
    from tunebench.configs import compose_group
    from tunebench.datasets import load
    from tunebench.methods import method_for
    from tunebench.methods.classifier import TextCodec, batch_order, encode, make_optimizer
    from tunebench.models import build

    data_cfg = compose_group("data", "rotten_tomatoes")
    method_cfg = compose_group("method", method_name)
    torch.manual_seed(seed)
    task = load(data_cfg)
    method = method_for(method_cfg)
    model = build(OmegaConf.create({"name": "minilm-l6"}), task)
    model.net = method.adapt(model.net, method_cfg)
    train = encode(model.tokenizer, task.train, int(data_cfg.max_length))
    batches = batch_order(len(train), batch_size, 1, seed)[:steps]
    optimizer, scheduler = make_optimizer(model.net, OmegaConf.create({}), float(method_cfg.lr), len(batches))
    return method, model, train, batches, optimizer, scheduler, TextCodec(model.tokenizer, 0)


def _harness_round(method, model, train, batches, optimizer, scheduler, codec) -> float:
    from tunebench.engine import Engine, TrainSettings
    from tunebench.methods.classifier import ClassifierJob

    meter = CostMeter("cpu").start()
    job = ClassifierJob(method.name, model.net, codec, train, None, batches, optimizer, scheduler, 128)
    job.evaluates = False
    # As in a local run: a checkpoint that is written only on preemption.
    engine = Engine(job, len(batches), TrainSettings(), meter,
                    checkpoint=RunCheckpoint(Path(tempfile.gettempdir()) / "tb-perf.pt", 0))
    start = time.perf_counter()
    engine.run()
    elapsed = time.perf_counter() - start
    meter.stop()
    return elapsed


def _hand_round(model, train, batches, optimizer, scheduler) -> float:
    """The minimal loop a researcher would write by hand."""
    net, tok = model.net, model.tokenizer
    start = time.perf_counter()
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    for indices in batches:
        batch = tok.pad({"input_ids": [train.input_ids[i] for i in indices]}, return_tensors="pt")
        batch["labels"] = torch.as_tensor(train.labels[indices])
        loss = net(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def run(steps: int, rounds: int, batch_size: int, seed: int = 0) -> dict:
    from tunebench.runner import _quiet_libraries

    _quiet_libraries()
    lora = _setup("lora", steps, batch_size, seed)
    method, model, train, batches, optimizer, scheduler, _ = lora
    _hand_round(model, train, batches, optimizer, scheduler)  # warm-up: allocator, kernels, caches
    harness, hand = [], []
    for _ in range(rounds):
        harness.append(_harness_round(*lora))
        hand.append(_hand_round(model, train, batches, optimizer, scheduler))
    full = _setup("full", steps, batch_size, seed)
    _harness_round(*full)  # warm-up
    full_times = [_harness_round(*full) for _ in range(rounds)]
    lora_step = statistics.median(harness) / steps
    full_step = statistics.median(full_times) / steps
    return {
        "steps_per_round": steps, "rounds": rounds, "batch_size": batch_size, "threads": torch.get_num_threads(),
        "lora_harness_round_s": harness, "lora_hand_round_s": hand, "full_harness_round_s": full_times,
        "harness_overhead_ratio": statistics.median(harness) / statistics.median(hand),
        "lora_step_s": lora_step, "full_step_s": full_step, "lora_over_full_step_ratio": lora_step / full_step,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunebench perf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed round (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per arm; medians are reported (default 5)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("results/perf/perf.json"))
    args = parser.parse_args(argv)
    result = run(args.steps, args.rounds, args.batch_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"LoRA steps through the harness / minimal PyTorch loop: {result['harness_overhead_ratio']:.3f}  (goal <= 1.03)")
    print(f"LoRA step {result['lora_step_s']:.3f} s / full step {result['full_step_s']:.3f} s = {result['lora_over_full_step_ratio']:.3f}")
    print(f"({args.rounds} rounds x {args.steps} steps, batch {args.batch_size}, {result['threads']} threads) -> {args.out}")
    return 0
