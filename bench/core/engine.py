"""The training engine: one step loop for every family that trains in optimiser steps.

What a run promises is written here once: the evaluation schedule and best-validation selection,
the divergence guard, metering (train samples, training-state bytes, train / eval time), in-run
checkpoints with requeue resume, the metrics logger, progress, and the scale knobs (precision,
gradient accumulation, gradient checkpointing, torch.compile). A family (classifier, CLIP,
few-shot) describes only what differs in a `TrainJob`: what a step's batch is, its loss, how it
evaluates, and what happens after an update (CLIP clamps its logit scale, MAML zeroes its head).
Avalanche keeps its own loop for the continual family; it uses the same `DivergenceGuard` and
`MeterHook` objects through a plugin. Extra behaviour plugs in as `Hook`s (before / after step,
after evaluation, after epoch), as in Avalanche.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tunebench.core import distributed as dp
from tunebench.core.checkpoint import PreemptionGuard, RunCheckpoint
from tunebench.core.meter import CostMeter

log = logging.getLogger("tunebench")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Diverged(RuntimeError):
    """Training produced a non-finite loss; the run ends with status `diverged`."""


# -- settings -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainSettings:
    """The run's shared training schedule (`train.*`), validated once; every family reads this, not the config.

    The defaults live in one place, the `train:` block of conf/config.yaml; `from_config` fills the
    keys a caller leaves out from there."""

    epochs: int
    max_steps: int | None
    batch_size: int
    eval_batch_size: int
    evals: int
    grad_clip: float | None
    lr_scale: float
    select_best: bool
    device: str
    checkpoint_every: Any
    precision: str
    grad_accum_steps: int
    grad_checkpointing: bool
    compile: Any
    distributed: str
    processes: int
    dist_timeout_s: float

    @classmethod
    def from_config(cls, train=None) -> "TrainSettings":
        values = dict(train) if train is not None else {}
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"train.{unknown[0]}: unknown key; train.* keys are {', '.join(cls.__dataclass_fields__)}")
        values = {**default_train_config(), **values}
        missing = sorted(set(cls.__dataclass_fields__) - set(values))
        if missing:
            raise ValueError(f"train.{missing[0]}: missing from the train block of conf/config.yaml")
        return cls(**{key: _checked(key, value) for key, value in values.items()})

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    @property
    def compile_backend(self) -> str | None:
        if self.compile in (False, None, "false", "none"):
            return None
        return "inductor" if self.compile in (True, "true") else str(self.compile)

    def describe(self) -> dict:
        """The scale knobs as the record shows them."""
        return {"precision": self.precision, "grad_accum_steps": self.grad_accum_steps,
                "grad_checkpointing": self.grad_checkpointing, "compile": self.compile_backend}


@functools.cache
def default_train_config() -> dict:
    """The `train:` block of the packaged conf/config.yaml (the only place train defaults are written)."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    config = OmegaConf.load(str(files("tunebench.conf") / "config.yaml"))
    return OmegaConf.to_container(config.train, resolve=True)


_POSITIVE_INTS = ("epochs", "batch_size", "eval_batch_size", "evals", "grad_accum_steps", "processes")


def _checked(key: str, value):
    """One `train.<key>` value, converted, or a ValueError that names the key and what it expects."""
    def fail(expected: str):
        raise ValueError(f"train.{key}={value!r}: expected {expected}")

    if key in _POSITIVE_INTS:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit() or int(value) < 1:
            fail("a whole number >= 1")
        return int(value)
    if key == "max_steps":
        if value is None:
            return None
        if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
            fail("null or a whole number >= 1")
        return int(value)
    if key in ("grad_clip", "lr_scale", "dist_timeout_s"):
        if value is None and key == "grad_clip":
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            fail("a positive number" + (" or null" if key == "grad_clip" else ""))
        if not number > 0 or not math.isfinite(number):
            fail("a positive number" + (" or null" if key == "grad_clip" else ""))
        return number
    if key in ("select_best", "grad_checkpointing"):
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if key == "precision":
        if value not in PRECISIONS:
            fail(" | ".join(PRECISIONS))
        return value
    if key == "distributed":
        if value not in dp.MODES:
            fail(" | ".join(dp.MODES))
        return value
    if key == "device":
        if not isinstance(value, str) or not (value in ("auto", "cpu") or value.startswith("cuda")):
            fail("auto, cpu or cuda[:N]")
        return value
    if key == "checkpoint_every":
        if value not in (None, "auto") and (isinstance(value, bool) or not str(value).isdigit()):
            fail("auto or a whole number >= 0 (steps between in-run checkpoints; 0: never)")
        return value if value in (None, "auto") else int(value)
    return value  # compile (a backend name or a bool)


MODALITY_LR_KEYS = {"image": "image_lr", "generation": "generation_lr"}  # where a method's lr differs by modality


def lr_for(method, train: TrainSettings, modality: str = "text") -> float:
    """method.lr (or method.image_lr on image tasks, method.generation_lr on causal-LM generation tasks,
    where set) times train.lr_scale."""
    key = MODALITY_LR_KEYS.get(modality)
    key = key if key and method.get(key) is not None else "lr"
    lr = method.get(key)
    if lr is None:
        return 0.0
    try:
        return float(lr) * train.lr_scale
    except (TypeError, ValueError):
        raise ValueError(f"method.{key}={lr!r}: expected a number") from None


# -- schedule helpers ----------------------------------------------------------------------------------
def batch_order(n: int, batch_size: int, epochs: int, seed: int) -> list[np.ndarray]:
    """Shuffled batches for all epochs, from the run seed only: identical across methods."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(epochs):
        perm = rng.permutation(n)
        batches.extend(perm[i : i + batch_size] for i in range(0, n, batch_size))
    return batches


def eval_steps(total_steps: int, evals: int) -> set[int]:
    """`evals` evenly spaced evaluation points, the last one at the final step."""
    evals = max(1, min(evals, total_steps))
    return {math.ceil(total_steps * k / evals) for k in range(1, evals + 1)}


def train_mode(net: nn.Module) -> None:
    """Training mode, except BatchNorm layers whose weights are frozen (PEFT on a CNN): their running
    statistics stay frozen too, or training-mode batch statistics drift away from what eval uses."""
    net.train()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def trainable_state(net: nn.Module) -> dict:
    """A copy of the trainable weights; an FSDP network's as shards, through the state-dict API."""
    if dp.is_sharded(net):
        return dp.trainable_shards(net)
    return {k: v.detach().clone() for k, v in net.named_parameters() if v.requires_grad}


# -- shared hook objects (the engine's and the Avalanche plugin's) -------------------------------------
class DivergenceGuard:
    """A non-finite loss ends the run as `diverged`, naming where and at which lr."""

    def __init__(self, lr: float | None = None):
        self.lr = lr

    def check(self, value: float, where: str) -> None:
        if not math.isfinite(value):
            lr = f" (lr={self.lr})" if self.lr is not None else ""
            raise Diverged(f"non-finite training loss {value} at {where}{lr}")


class MeterHook:
    """Feeds the cost meter after each optimiser update: samples, and the exact training-state bytes once
    (after the first update, when the optimiser's state exists)."""

    def __init__(self, meter: CostMeter):
        self.meter = meter

    def after_update(self, net: nn.Module, optimizer, samples: int) -> None:
        self.meter.add_train_samples(samples)
        self.meter.count_training_state_once(net, optimizer)


class Hook:
    """Avalanche-style extension points of the engine; every method is optional."""

    def before_step(self, engine: "Engine", step: int) -> None: ...

    def after_step(self, engine: "Engine", step: int, loss: float) -> None: ...

    def after_eval(self, engine: "Engine", point: dict) -> None: ...

    def after_epoch(self, engine: "Engine", epoch: int) -> None: ...


class MetricsLogger(Hook):
    """Each evaluation point to the run's logger (wandb, ...) and the log."""

    def __init__(self, log_metrics: Callable[[dict, int], None] | None):
        self.log_metrics = log_metrics

    def after_eval(self, engine: "Engine", point: dict) -> None:
        if self.log_metrics:
            self.log_metrics(point, point["step"])
        val = point.get("val_acc")
        log.info("step %d/%d  loss %.4f  val acc %s", point["step"], engine.steps, point["train_loss"],
                 "n/a" if val is None else f"{val:.4f}")


# -- what a family gives the engine ---------------------------------------------------------------------
class TrainJob:
    """One family's training, as the engine drives it. Subclasses set `net`, `optimizer`, `scheduler`
    and implement `batch`, `loss` and (to be evaluated) `evaluate`."""

    name = "train"
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    evaluates = True
    distributed = False  # True: its evaluation shares the examples across ranks (tunebench.core.distributed)

    def batch(self, step: int) -> Sequence:
        """The items (example indices, tasks) of optimiser step `step` (1-based)."""
        raise NotImplementedError

    def micro_batches(self, batch: Sequence, parts: int) -> list:
        """The batch split into `parts` near-equal micro-batches (gradient accumulation)."""
        parts = max(1, min(parts, len(batch)))
        if parts == 1:
            return [batch]
        bounds = np.linspace(0, len(batch), parts + 1).round().astype(int)
        return [batch[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def loss(self, micro) -> tuple[torch.Tensor, int]:
        """Mean loss of a micro-batch and its number of training samples."""
        raise NotImplementedError

    def loss_units(self, items) -> float:
        """What `loss` averages over, counted for `items` (default: the items; a token-mean loss: tokens)."""
        return len(items)

    def train_mode(self) -> None:
        train_mode(self.net)

    def after_update(self, step: int) -> None:
        """After the optimiser and scheduler stepped, before gradients are cleared (weight constraints, AdaLoRA's budget)."""

    def evaluate(self) -> dict:
        """Validation scores of the current weights; `val_acc` is the one selection uses."""
        raise NotImplementedError

    def clip_parameters(self) -> list[torch.Tensor]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def snapshot(self) -> dict:
        """The state best-validation selection keeps (default: the trainable weights)."""
        return trainable_state(self.net)

    def restore(self, state: dict) -> None:
        if dp.is_sharded(self.net):
            dp.load_trainable_shards(self.net, state)
        else:
            self.net.load_state_dict(state, strict=False)

    def checkpoint_state(self) -> dict:
        """What a checkpoint needs to continue: trainable weights and every buffer (BatchNorm statistics)."""
        return {**trainable_state(self.net), **{k: v.detach().clone() for k, v in self.net.named_buffers()}}

    def load_checkpoint_state(self, state: dict) -> None:
        self.net.load_state_dict(state, strict=False)


@dataclass
class Outcome:
    best_val: float | None
    best_step: int
    curve: list = field(default_factory=list)
    resumed_from_step: int = 0
    steps: int = 0


# -- precision, checkpointing, compile -------------------------------------------------------------------
def device_type(net: nn.Module) -> str:
    param = next(net.parameters(), None)
    return param.device.type if param is not None else "cpu"


def cpu_bf16_native() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 / AMX). Without it bf16 is emulated: on an AVX2
    EPYC a SmolLM2-135M training step took 215 s under bf16 autocast vs 7 s in fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(settings: TrainSettings, device: str):
    """Mixed precision for forward passes (training and evaluation); fp32: no autocast at all."""
    dtype = settings.autocast_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)


def enable_gradient_checkpointing(net: nn.Module) -> str:
    """Turn on the model's own activation checkpointing (transformers' gradient_checkpointing_enable,
    open_clip's / timm's set_grad_checkpointing) at the outermost module that has it; names that module."""
    kwargs = {"use_reentrant": False}  # non-reentrant: works when the inputs need no grad (frozen embeddings under LoRA)
    for name, module in net.named_modules():
        if getattr(module, "supports_gradient_checkpointing", False):
            if hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5.x
                module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
                return name or type(module).__name__
            if hasattr(module, "gradient_checkpointing_enable"):
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
                return name or type(module).__name__
        if hasattr(module, "set_grad_checkpointing"):
            module.set_grad_checkpointing(True)
            return name or type(module).__name__
    raise ValueError(f"train.grad_checkpointing=true: {type(net).__name__} has no module that supports gradient "
                     f"checkpointing (a transformers model or an open_clip / timm model); set it to false for this model")


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def _as_tuples(value):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


# -- the engine -------------------------------------------------------------------------------------------
class Engine:
    """Runs a `TrainJob` for `steps` optimiser steps with everything a run promises."""

    def __init__(self, job: TrainJob, steps: int, settings: TrainSettings, meter: CostMeter, *,
                 lr: float | None = None, checkpoint: RunCheckpoint | None = None,
                 log_metrics: Callable | None = None, hooks: Sequence[Hook] = (), steps_per_epoch: int | None = None):
        self.job, self.steps, self.settings, self.meter = job, int(steps), settings, meter
        self.checkpoint = checkpoint
        self.guard = DivergenceGuard(lr)
        self.meter_hook = MeterHook(meter)
        self.hooks = [MetricsLogger(log_metrics), *hooks]
        self.steps_per_epoch = steps_per_epoch
        self.evals_at = eval_steps(self.steps, settings.evals) if job.evaluates and self.steps else set()
        self.device = device_type(job.net)
        self.ranks = dp.current()
        self._check_distributed()
        self.scaler = self._grad_scaler()
        self.step, self.running, self.seen = 0, 0.0, 0
        self.best = {"acc": None, "step": 0, "state": None}
        self.curve: list[dict] = []
        self.prepared = self._prepare_model()
        self.parallel = dp.ParallelNet(job.net, self.ranks)  # after compile / checkpointing: DDP wraps the final module

    def _check_distributed(self) -> None:
        if not self.ranks.active:
            return
        if not self.job.distributed:
            raise ValueError(f"train.distributed={self.ranks.mode} with {self.ranks.world} processes: {type(self.job).__name__} "
                             f"has no multi-process path (its evaluation is not shared across ranks); run this "
                             f"family in one process (train.processes=1, no torchrun)")

    def _grad_scaler(self):
        if self.settings.precision != "fp16":
            return None
        return torch.amp.GradScaler(self.device)  # fp16 gradients underflow without loss scaling

    def _prepare_model(self) -> dict:
        out = dict(self.settings.describe())
        if self.settings.precision == "bf16" and self.device == "cpu":
            out["cpu_bf16_native"] = cpu_bf16_native()
            if not out["cpu_bf16_native"]:
                log.warning("train.precision=bf16 on a CPU without native bf16 (no AVX512-BF16 / AMX): the matmuls are "
                            "emulated and a step can be tens of times slower than fp32; train.precision=fp32 is faster here")
        if self.ranks.active:
            out["distributed"] = self._describe_ranks()
        if self.settings.grad_checkpointing:
            out["grad_checkpointing_module"] = enable_gradient_checkpointing(self.job.net)
        backend = self.settings.compile_backend
        if backend:
            self.job.net.compile(backend=backend)
        return out

    def _describe_ranks(self) -> dict:
        """The record's account of the processes: global batch = micro-batch x ranks x accumulation steps."""
        def whole(value: float):
            return int(value) if float(value).is_integer() else round(value, 3)

        per_rank = self.settings.batch_size / self.ranks.world
        return {**self.ranks.describe(), "global_batch": self.settings.batch_size, "per_rank_batch": whole(per_rank),
                "grad_accum_steps": self.settings.grad_accum_steps,
                "micro_batch": whole(per_rank / self.settings.grad_accum_steps)}

    def autocast(self):
        return autocast(self.settings, self.device)

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> Outcome:
        resumed = self._resume()
        progress = tqdm(total=self.steps, initial=self.step, desc=f"train {self.job.name}", unit="step",
                        mininterval=5, leave=False, disable=not self.ranks.is_main)
        with PreemptionGuard() as preemption:
            for step in range(self.step + 1, self.steps + 1):
                for hook in self.hooks:
                    hook.before_step(self, step)
                with self.meter.phase("train"):
                    self.job.train_mode()
                    loss, samples = self._update(step)
                self.meter_hook.after_update(self.job.net, self.job.optimizer, samples)
                self.step, self.running, self.seen = step, self.running + loss, self.seen + 1
                progress.update(1)
                for hook in self.hooks:
                    hook.after_step(self, step, loss)
                if step in self.evals_at:
                    self._evaluate()
                if self.steps_per_epoch and step % self.steps_per_epoch == 0:
                    for hook in self.hooks:
                        hook.after_epoch(self, step // self.steps_per_epoch)
                self._after_step_checkpoint(preemption)
        progress.close()
        if self.settings.select_best and self.best["state"] is not None:
            self.job.restore(self.best["state"])
        return Outcome(self.best["acc"], self.best["step"], self.curve, resumed, self.steps)

    def _update(self, step: int) -> tuple[float, int]:
        """One optimiser step over the step's micro-batches; returns the mean loss and the samples.

        With several ranks each takes its share of the global batch (`dp.shard`), its loss weighted so
        that DDP's gradient average is the global batch's; the loss and samples reported are the global ones."""
        job = self.job
        dp.rehearse_fault(step)
        batch = job.batch(step)
        items, counts = dp.shard(batch, self.ranks)
        units = job.loss_units(batch)  # of the global batch: every rank knows it
        micros = job.micro_batches(items, self.settings.grad_accum_steps)
        total, samples, loss_sum = 0.0, 0, 0.0
        for i, micro in enumerate(micros):
            with self.parallel.training(job, sync=i == len(micros) - 1):
                with self.autocast():
                    loss, n = job.loss(micro)
                value = float(loss.detach())
                if not self.ranks.active:  # several ranks: checked once on the global loss, on every rank alike
                    self.guard.check(value, f"step {step}")
                # Each micro-batch's mean by its share of the global batch's loss units (x ranks: DDP averages them),
                # so unequal splits and several ranks make the update of one process on the whole batch.
                scale = job.loss_units(micro) * self.ranks.world / units if counts else 0.0
                part = loss * scale if scale != 1.0 else loss
                (self.scaler.scale(part) if self.scaler else part).backward()
            n = n if counts else 0
            total, samples, loss_sum = total + value, samples + n, loss_sum + value * n
        mean = total / len(micros)
        if self.ranks.active:
            mean, samples = dp.global_mean(loss_sum, samples)
            self.guard.check(mean, f"step {step}")
        if self.scaler:
            self.scaler.unscale_(job.optimizer)
        if self.settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(job.clip_parameters(), self.settings.grad_clip)
        if self.scaler:
            self.scaler.step(job.optimizer)
            self.scaler.update()
        else:
            job.optimizer.step()
        if job.scheduler is not None:
            job.scheduler.step()
        job.after_update(step)
        job.optimizer.zero_grad(set_to_none=True)
        return mean, samples

    def _evaluate(self) -> None:
        with self.meter.phase("eval"), self.autocast():
            scores = self.job.evaluate()
        point = {"step": self.step, "train_loss": self.running / self.seen, **scores}
        self.curve.append(point)
        for hook in self.hooks:
            hook.after_eval(self, point)
        self.running, self.seen = 0.0, 0
        val = scores.get("val_acc")
        if val is not None and (self.best["acc"] is None or val > self.best["acc"]):
            state = self.job.snapshot() if self.settings.select_best else None
            self.best = {"acc": val, "step": self.step, "state": state}

    # -- checkpoints ------------------------------------------------------------------------------------
    def state(self, rng: Any = None, tensors: bool = True) -> dict:
        """What a checkpoint holds; `rng`: the RNG states to keep (every rank's, in rank order, when several);
        tensors=False: without the weights and optimizer state (an FSDP checkpoint keeps those sharded)."""
        return {
            "step": self.step, "running": self.running, "seen": self.seen, "best": self.best, "curve": list(self.curve),
            "job": self.job.checkpoint_state() if tensors else None,
            "optimizer": self.job.optimizer.state_dict() if tensors else None,
            "scheduler": self.job.scheduler.state_dict() if self.job.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler else None, "rng": rng if rng is not None else rng_state(),
            "n_steps": self.steps,
            "meter": {"train": self.meter.times["train"], "eval": self.meter.times["eval"], "samples": self.meter.train_samples,
                      "cpu": dict(self.meter.cpu_times) if self.meter.cpu_measured else None},
        }

    def _resume(self) -> int:
        """Load the run's checkpoint if there is one; returns the step it resumes from (0: fresh)."""
        state = self.checkpoint.load() if self.checkpoint else None
        if not state:
            return 0
        if state.get("n_steps") != self.steps:
            raise ValueError(f"checkpoint {self.checkpoint.path} is for {state.get('n_steps')} steps, this run has "
                             f"{self.steps}; delete it to start over")
        if state.get("sharded"):
            self._load_sharded(state)
        else:
            self.job.load_checkpoint_state(state["job"])
            self.job.optimizer.load_state_dict(state["optimizer"])
        if self.job.scheduler is not None:
            self.job.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(self._own_rng(state["rng"]))
        self.step, self.running, self.seen, self.best = state["step"], state["running"], state["seen"], state["best"]
        self.curve = list(state["curve"])
        self.meter.times["train"] += state["meter"]["train"]
        self.meter.times["eval"] += state["meter"]["eval"]
        self.meter.train_samples += state["meter"]["samples"]
        cpu = state["meter"].get("cpu")  # None: the checkpoint's part was not measured (or predates CPU seconds)
        if cpu is None:
            self.meter.cpu_measured = False
        else:
            for phase, seconds in cpu.items():
                self.meter.cpu_times[phase] = self.meter.cpu_times.get(phase, 0.0) + seconds
        log.info("resuming from step %d/%d (%s)", self.step, self.steps, self.checkpoint.path)
        return self.step

    def _own_rng(self, saved):
        """This rank's RNG state from a checkpoint (a list of every rank's when several ranks saved it)."""
        if not isinstance(saved, list):
            return saved
        if len(saved) != self.ranks.world:
            raise ValueError(f"checkpoint {self.checkpoint.path} was written by {len(saved)} processes, this run has "
                             f"{self.ranks.world}; resume with the same number, or delete it to start over")
        return saved[self.ranks.rank]

    def _after_step_checkpoint(self, preemption: PreemptionGuard) -> None:
        if self.checkpoint is None:
            return
        if dp.broadcast_flag(preemption.requested):  # a signal that reached one rank stops them all at this step
            self._save_checkpoint()
            preemption.hand_over()  # submitit requeues the job and exits this process
        elif self.checkpoint.due(self.step, self.step in self.evals_at) and self.step < self.steps:
            self._save_checkpoint()

    def _save_checkpoint(self) -> None:
        """Rank 0 writes the checkpoint (DDP replicas are identical) with every rank's RNG state; an FSDP
        network is saved sharded, each rank its own shards."""
        rngs = dp.gather_objects(rng_state())
        rng = rngs if self.ranks.active else rngs[0]
        if dp.is_sharded(self.job.net):
            self.checkpoint.save_sharded(self._sharded_tensors(), self._plain_state(rng), self.ranks.rank, dp.barrier)
            return
        if self.ranks.is_main:
            self.checkpoint.save(self.state(rng=rng))
        dp.barrier()  # nobody runs ahead of a checkpoint that is still being written

    # FSDP: the tensors go through torch.distributed.checkpoint (sharded), the rest in the plain file.
    def _sharded_tensors(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        net, optimizer = self.job.net, self.job.optimizer
        return {"model": get_model_state_dict(net), "optim": get_optimizer_state_dict(net, optimizer),
                "best": self.best["state"] or {}}

    def _plain_state(self, rng) -> dict:
        state = self.state(rng=rng, tensors=False)
        state["best"] = {**self.best, "state": None, "has_state": self.best["state"] is not None}
        return state

    def _load_sharded(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        destination = self._sharded_tensors()  # this run's shapes and shards, filled in place
        destination["best"] = self.job.snapshot() if state["best"].get("has_state") else {}
        self.checkpoint.load_sharded(destination)
        set_model_state_dict(self.job.net, destination["model"])
        set_optimizer_state_dict(self.job.net, self.job.optimizer, destination["optim"])
        state["best"] = {"acc": state["best"]["acc"], "step": state["best"]["step"], "state": destination["best"] or None}
