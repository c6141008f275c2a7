"""`tunebench perf`: the harness's overhead, LoRA / full step time, and a whole cell against HF Trainer.

Steps (default): three arms train in one process on the same batches: a minimal hand-written PyTorch
LoRA loop, LoRA through the engine (metering, divergence guard, progress, hooks, checkpoint checks),
and full fine-tuning through the engine. They run in small interleaved blocks whose order rotates
every round, so a load change on a shared machine hits every arm alike; each round gives paired
ratios (engine LoRA / hand loop, LoRA / full) of wall time and of process CPU time, and the report is
their median with the min-max spread. Goal: overhead ratio <= 1.03.

Cell (`--cell`): one `tunebench run` cell (default LoRA on Rotten Tomatoes) against the same job written
with HF `Trainer` + peft (same data, model, adapter, optimiser, schedule, steps and evaluations; see
`tunebench.app.hf_trainer_cell`), each as its own process, alternating; wall and CPU ratios per pair.
Goal: tunebench / Trainer <= 1.0. tunebench evaluates text in length-sorted batches and the Trainer (default
settings) in data order: that is most of the difference. Benchmarks, not tests: the numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tunebench.core.checkpoint import RunCheckpoint
from tunebench.core.meter import CostMeter


# -- step blocks ---------------------------------------------------------------------------------------
class Arm:
    """One arm's model, optimiser and batches; `block()` trains `steps` steps, timed."""

    def __init__(self, label: str, method_name: str, steps: int, batch_size: int, seed: int, through_engine: bool):
        from tunebench.core.configs import compose_group
        from tunebench.datasets import load
        from tunebench.methods import method_for
        from tunebench.methods.classifier import TextCodec, batch_order, encode, make_optimizer
        from tunebench.core.models import build

        data_cfg = compose_group("data", "rotten_tomatoes")
        method_cfg = compose_group("method", method_name)
        torch.manual_seed(seed)
        task = load(data_cfg)
        model = build(compose_group("model", "minilm"), task)
        self.label, self.through_engine = label, through_engine
        self.net, self.tokenizer = method_for(method_cfg).adapt(model.net, method_cfg), model.tokenizer
        self.train = encode(model.tokenizer, task.train, int(data_cfg.max_length))
        self.batches = batch_order(len(self.train), batch_size, 1, seed)[:steps]
        # A constant schedule: every block repeats the same steps, so blocks are comparable.
        self.optimizer, _ = make_optimizer(self.net, method_cfg, float(method_cfg.lr), len(self.batches))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        self.codec = TextCodec(model.tokenizer, 0)

    def block(self) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one block of steps."""
        run = self._engine_block if self.through_engine else self._hand_block
        return run()

    def _engine_block(self) -> tuple[float, float]:
        from tunebench.core.engine import Engine, TrainSettings
        from tunebench.methods.classifier import ClassifierJob

        meter = CostMeter("cpu")  # its memory baseline (malloc_trim, a run's start-up cost) is not per step
        job = ClassifierJob(self.label, self.net, self.codec, self.train, None, self.batches, self.optimizer, self.scheduler, 128)
        job.evaluates = False
        # As in a local run: a checkpoint that is written only on preemption.
        engine = Engine(job, len(self.batches), TrainSettings.from_config(), meter,
                        checkpoint=RunCheckpoint(Path(tempfile.gettempdir()) / "tb-perf.pt", 0))
        wall, cpu = time.perf_counter(), time.process_time()
        engine.run()
        return time.perf_counter() - wall, time.process_time() - cpu

    def _hand_block(self) -> tuple[float, float]:
        """The minimal loop a researcher would write by hand."""
        net, tok = self.net, self.tokenizer
        wall, cpu = time.perf_counter(), time.process_time()
        net.train()
        params = [p for p in net.parameters() if p.requires_grad]
        for indices in self.batches:
            batch = tok.pad({"input_ids": [self.train.input_ids[i] for i in indices]}, return_tensors="pt")
            batch["labels"] = torch.as_tensor(self.train.labels[indices])
            loss = net(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - wall, time.process_time() - cpu


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": values}


def paired(times: dict, a: str, b: str, kind: int) -> dict:
    """Per-round ratio of arm a to arm b (kind 0: wall, 1: CPU)."""
    return spread([x[kind] / y[kind] for x, y in zip(times[a], times[b])])


def steps_benchmark(steps: int, rounds: int, batch_size: int, seed: int = 0) -> dict:
    from tunebench.app.runner import _quiet_libraries

    _quiet_libraries()
    arms = [Arm("hand", "lora", steps, batch_size, seed, False), Arm("lora", "lora", steps, batch_size, seed, True),
            Arm("full", "full", steps, batch_size, seed, True)]
    arms[1].net, arms[1].optimizer, arms[1].scheduler = arms[0].net, arms[0].optimizer, arms[0].scheduler  # one LoRA model
    for arm in arms:
        arm.block()  # warm-up: allocator, kernels, caches
    times = {arm.label: [] for arm in arms}
    for r in range(rounds):
        for arm in arms[r % 3:] + arms[:r % 3]:  # rotate the order: no arm always runs first
            times[arm.label].append(arm.block())
    return {
        "steps_per_block": steps, "rounds": rounds, "batch_size": batch_size, "threads": torch.get_num_threads(),
        "block_seconds": {k: [list(t) for t in v] for k, v in times.items()},
        "overhead_wall": paired(times, "lora", "hand", 0), "overhead_cpu": paired(times, "lora", "hand", 1),
        "lora_over_full_wall": paired(times, "lora", "full", 0), "lora_over_full_cpu": paired(times, "lora", "full", 1),
    }


# -- whole cells ------------------------------------------------------------------------------------------
def _timed_process(command: list[str], env: dict) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, all threads) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cell_commands(workdir: Path, max_steps: int, evals: int, train_size: int, threads: int) -> dict:
    shared = [f"data.train_size={train_size}", f"train.max_steps={max_steps}", f"train.evals={evals}", f"threads={threads}"]
    return {
        "tunebench": [sys.executable, "-m", "tunebench.app.run", "method=lora", "logger=none", "force=true",
                      "sweep=perf_cell", *shared],
        "trainer": [sys.executable, "-m", "tunebench.app.hf_trainer_cell", "--out", str(workdir / "trainer"),
                    f"--max-steps={max_steps}", f"--evals={evals}", f"--train-size={train_size}", f"--threads={threads}"],
    }


def cell_benchmark(pairs: int, max_steps: int, evals: int, train_size: int, threads: int = 1) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="tb-perf-cell-"))
    env = {**os.environ, "TUNEBENCH_RESULTS": str(workdir / "results"), "WANDB_MODE": "offline",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    commands = cell_commands(workdir, max_steps, evals, train_size, threads)
    times = {"tunebench": [], "trainer": []}
    try:
        for k in range(pairs):
            order = ["tunebench", "trainer"] if k % 2 == 0 else ["trainer", "tunebench"]
            for name in order:
                times[name].append(_timed_process(commands[name], env))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the cells' records and caches are only timed, never read
    return {"pairs": pairs, "max_steps": max_steps, "evals": evals, "train_size": train_size, "threads": threads,
            "process_seconds": {k: [list(t) for t in v] for k, v in times.items()},
            "cell_wall": paired(times, "tunebench", "trainer", 0), "cell_cpu": paired(times, "tunebench", "trainer", 1)}


def summary_markdown(result: dict) -> str:
    """The published table of one `tunebench perf` run (median, min-max over rounds / pairs)."""
    rows = []
    if "steps" in result:
        s = result["steps"]
        where = f"{s['rounds']} rounds x 3 arms x {s['steps_per_block']} steps, batch {s['batch_size']}, {s['threads']} threads"
        rows += [("engine LoRA / hand-written loop, wall", s["overhead_wall"], "<= 1.03", where),
                 ("engine LoRA / hand-written loop, CPU", s["overhead_cpu"], "", where),
                 ("LoRA / full step, wall", s["lora_over_full_wall"], "", where),
                 ("LoRA / full step, CPU", s["lora_over_full_cpu"], "", where)]
    if "cell" in result:
        c = result["cell"]
        where = (f"{c['pairs']} alternating process pairs, {c['max_steps']} steps, {c['evals']} evaluations + test, "
                 f"{c.get('threads', 1)} thread(s)")
        rows += [("tunebench cell / HF Trainer cell, wall", c["cell_wall"], "<= 1.0", where),
                 ("tunebench cell / HF Trainer cell, CPU", c["cell_cpu"], "", where)]
    lines = ["| ratio | median | min - max | goal | measured over |", "|---|---|---|---|---|"]
    lines += [f"| {name} | **{s['median']:.3f}** | {s['min']:.3f} - {s['max']:.3f} | {goal} | {where} |" for name, s, goal, where in rows]
    lines.append(f"\nLoad average at the start: {result['machine_load_1min']:.2f} on {result['cpu_count']} CPUs"
                 f"{' (' + result['note'] + ')' if result.get('note') else ''}.")
    return "\n".join(lines) + "\n"


def _line(name: str, s: dict, goal: str = "") -> str:
    return f"{name}: {s['median']:.3f} (min {s['min']:.3f}, max {s['max']:.3f}){goal}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunebench perf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="training steps per block (default 3)")
    parser.add_argument("--rounds", type=int, default=12, help="rounds of interleaved blocks (default 12)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in every arm and cell (default 1: on a shared machine, spinning "
                             "OpenMP threads would count as CPU time)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cell", action="store_true", help="also compare a whole tunebench cell with HF Trainer")
    parser.add_argument("--cell-only", action="store_true", help="only the whole-cell comparison")
    parser.add_argument("--pairs", type=int, default=2, help="alternating tunebench / Trainer process pairs (default 2)")
    parser.add_argument("--cell-steps", type=int, default=30, help="training steps of each cell (default 30)")
    parser.add_argument("--cell-evals", type=int, default=2, help="validation evaluations in each cell (default 2)")
    parser.add_argument("--cell-train-size", type=int, default=2000, help="training sentences (default 2000, as experiment=quick)")
    parser.add_argument("--note", default="", help="what else ran on the machine (kept in the output)")
    parser.add_argument("--out", type=Path, default=Path("results/perf/perf.json"),
                        help="JSON of every block; a markdown summary is written next to it (.md)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"machine_load_1min": os.getloadavg()[0], "cpu_count": os.cpu_count(), "note": args.note}
    if not args.cell_only:
        result["steps"] = steps_benchmark(args.steps, args.rounds, args.batch_size)
        s = result["steps"]
        print(_line("engine LoRA / hand loop, wall", s["overhead_wall"], "  (goal <= 1.03)"))
        print(_line("engine LoRA / hand loop, CPU ", s["overhead_cpu"]))
        print(_line("LoRA / full step, wall", s["lora_over_full_wall"]))
        print(_line("LoRA / full step, CPU ", s["lora_over_full_cpu"]))
        print(f"({args.rounds} rounds x 3 arms x {args.steps} steps, batch {args.batch_size}, {s['threads']} threads)")
    if args.cell or args.cell_only:
        result["cell"] = cell_benchmark(args.pairs, args.cell_steps, args.cell_evals, args.cell_train_size, args.threads)
        c = result["cell"]
        print(_line("tunebench cell / HF Trainer cell, wall", c["cell_wall"], "  (goal <= 1.0)"))
        print(_line("tunebench cell / HF Trainer cell, CPU ", c["cell_cpu"]))
        print(f"({args.pairs} alternating pairs of processes, {args.cell_steps} steps, {args.cell_evals} evaluations)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(summary_markdown(result))
    print(f"load average at start {result['machine_load_1min']:.2f} on {result['cpu_count']} CPUs -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
