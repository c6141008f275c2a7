"""Shared fit / evaluate loop for sequence-classification methods (full, LoRA, prefix, IA3, prompt).

Every method gets the same data order (from the run seed), the same number of steps and the same
evaluation schedule; only `adapt` (what is trainable) and the method's optimiser settings differ.
"""
from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import f1_score
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from tunebench.checkpoint import PreemptionGuard, RunCheckpoint
from tunebench.meter import CostMeter
from tunebench.methods import Diverged

log = logging.getLogger("tunebench")


@dataclass
class Encoded:
    """A tokenised split: token id lists (padded per batch, dynamically) and labels."""
    input_ids: list[list[int]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def encode(tokenizer, split, max_length: int) -> Encoded:
    ids = tokenizer(list(split.x), truncation=True, max_length=max_length)["input_ids"]
    return Encoded(ids, np.asarray(split.y, dtype=np.int64))


@dataclass
class EncodedImages:
    pixels: torch.Tensor  # (N, C, H, W) float32
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


class TextCodec:
    """Token ids per example, padded per batch (dynamic padding)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def encode(self, split) -> Encoded:
        return encode(self.tokenizer, split, self.max_length)

    def collate(self, data: Encoded, indices) -> dict:
        batch = self.tokenizer.pad({"input_ids": [data.input_ids[i] for i in indices]}, return_tensors="pt")
        batch["labels"] = torch.as_tensor(data.labels[indices])
        return batch


class ImageCodec:
    """Images as one float tensor; (H, W) inputs get a channel axis."""

    def encode(self, split) -> EncodedImages:
        pixels = torch.as_tensor(np.stack([np.asarray(x, dtype=np.float32) for x in split.x]))
        if pixels.ndim == 3:
            pixels = pixels.unsqueeze(1)
        return EncodedImages(pixels, np.asarray(split.y, dtype=np.int64))

    def collate(self, data: EncodedImages, indices) -> dict:
        indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return {"pixel_values": data.pixels[indices], "labels": torch.as_tensor(data.labels[indices.numpy()])}


def make_codec(model, task):
    if task.modality == "image":
        return ImageCodec()
    return TextCodec(model.tokenizer, int(task.meta.get("max_length", 128)))


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


@torch.no_grad()
def predict(net, codec, data, batch_size: int) -> np.ndarray:
    net.eval()
    preds = []
    for start in range(0, len(data), batch_size):
        batch = codec.collate(data, np.arange(start, min(start + batch_size, len(data))))
        batch.pop("labels")
        preds.append(net(**batch).logits.argmax(-1).numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def scores(preds: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "acc": float(np.mean(preds == labels)),
        "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
    }


def trainable_state(net) -> dict:
    return {k: v.detach().clone() for k, v in net.named_parameters() if v.requires_grad}


@dataclass
class TrainPlan:
    batches: list
    evals_at: set
    lr: float
    weight_decay: float
    warmup_ratio: float
    grad_clip: float | None
    eval_batch_size: int
    curve: list = field(default_factory=list)


def effective_lr(cfg, modality: str = "text") -> float:
    """method.lr (or method.image_lr on image tasks, where set) times train.lr_scale."""
    lr = cfg.method.get("image_lr") if modality == "image" else None
    return float(lr if lr is not None else cfg.method.lr) * float(cfg.train.get("lr_scale", 1.0))


def make_plan(n_train: int, cfg, modality: str = "text") -> TrainPlan:
    t, m = cfg.train, cfg.method
    batches = batch_order(n_train, int(t.batch_size), int(t.epochs), int(cfg.seed))
    if t.get("max_steps"):
        batches = batches[: int(t.max_steps)]
    return TrainPlan(
        batches=batches,
        evals_at=eval_steps(len(batches), int(t.evals)),
        lr=effective_lr(cfg, modality),
        weight_decay=float(m.get("weight_decay", 0.0)),
        warmup_ratio=float(m.get("warmup_ratio", 0.0)),
        grad_clip=t.get("grad_clip"),
        eval_batch_size=int(t.eval_batch_size),
    )


def make_optimizer(net, plan: TrainPlan):
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the adapted model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=plan.lr, weight_decay=plan.weight_decay)
    total = len(plan.batches)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(plan.warmup_ratio * total), total)
    return optimizer, scheduler


def train_step(net, batch, optimizer, scheduler, grad_clip) -> torch.Tensor:
    loss = net(**batch).loss
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


class TrainLoop:
    """The state of a training loop that a checkpoint must carry to continue exactly where it was."""

    def __init__(self, net, optimizer, scheduler, plan: TrainPlan, meter: CostMeter, checkpoint: RunCheckpoint | None):
        self.net, self.optimizer, self.scheduler, self.plan, self.meter = net, optimizer, scheduler, plan, meter
        self.checkpoint = checkpoint
        # BatchNorm layers whose weights are frozen (PEFT on a CNN) keep their running statistics
        # frozen too: otherwise training-mode batch statistics drift away from what eval uses.
        self.frozen_norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                             and not any(p.requires_grad for p in m.parameters())]
        self.step, self.running, self.seen = 0, 0.0, 0
        self.best = {"acc": -1.0, "step": 0, "state": None}

    def train_mode(self) -> None:
        self.net.train()
        for norm in self.frozen_norms:
            norm.eval()

    def state(self) -> dict:
        return {
            "step": self.step, "running": self.running, "seen": self.seen, "best": self.best,
            "trainable": trainable_state(self.net), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "curve": list(self.plan.curve),
            "torch_rng": torch.get_rng_state(), "n_batches": len(self.plan.batches),
            "meter": {"train": self.meter.times["train"], "eval": self.meter.times["eval"], "samples": self.meter.train_samples},
        }

    def resume(self) -> int:
        """Load the run's checkpoint if there is one; returns the step it resumes from (0: fresh)."""
        state = self.checkpoint.load() if self.checkpoint else None
        if not state:
            return 0
        if state["n_batches"] != len(self.plan.batches):
            raise ValueError(f"checkpoint {self.checkpoint.path} is for {state['n_batches']} steps, this run has "
                             f"{len(self.plan.batches)}; delete it to start over")
        self.net.load_state_dict(state["trainable"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.running, self.seen, self.best = state["step"], state["running"], state["seen"], state["best"]
        self.plan.curve[:] = state["curve"]
        self.meter.times["train"] += state["meter"]["train"]
        self.meter.times["eval"] += state["meter"]["eval"]
        self.meter.train_samples += state["meter"]["samples"]
        log.info("resuming from step %d/%d (%s)", self.step, len(self.plan.batches), self.checkpoint.path)
        return self.step

    def after_step(self, guard: PreemptionGuard) -> None:
        if self.checkpoint is None:
            return
        if guard.requested:
            self.checkpoint.save(self.state())
            guard.hand_over()  # submitit requeues the job and exits this process
        elif self.checkpoint.due(self.step, self.step in self.plan.evals_at) and self.step < len(self.plan.batches):
            self.checkpoint.save(self.state())


class SequenceClassifierMethod:
    """Base for methods that fine-tune a (possibly adapted) sequence classifier end to end."""

    name = "base"
    modalities = ("text",)  # tasks it can fine-tune on

    def adapt(self, net, cfg):
        """Return the network to train; the base trains every parameter."""
        return net

    def save(self, net, out_dir: str) -> None:
        net.save_pretrained(out_dir)

    def fit_evaluate(self, model, task, cfg, meter: CostMeter, ctx=None) -> dict:
        net, codec = model.net, make_codec(model, task)
        ctx = ctx if ctx is not None else {}
        train, val, test = (codec.encode(s) for s in (task.train, task.validation, task.test))
        plan = make_plan(len(train), cfg, task.modality)
        optimizer, scheduler = make_optimizer(net, plan)
        loop = TrainLoop(net, optimizer, scheduler, plan, meter, ctx.get("checkpoint"))
        ctx["resumed_from_step"] = loop.resume()
        best = self._train(net, codec, train, val, loop, ctx)
        if cfg.train.get("select_best", True) and best["state"] is not None:
            net.load_state_dict(best["state"], strict=False)
        with meter.phase("eval"):
            test_preds = predict(net, codec, test, plan.eval_batch_size)
        self._measure_saved(net, meter)
        result = {f"test_{k}": v for k, v in scores(test_preds, test.labels).items()}
        result.update(
            best_val_acc=best["acc"],
            best_step=best["step"],
            steps=len(plan.batches),
            test_correct="".join("1" if c else "0" for c in test_preds == test.labels),
            majority_baseline_test_acc=task.majority_baseline(),
        )
        return {"metrics": result, "curve": plan.curve}

    def _train(self, net, codec, train, val, loop: "TrainLoop", ctx) -> dict:
        plan, meter = loop.plan, loop.meter
        progress = tqdm(total=len(plan.batches), initial=loop.step, desc=f"train {self.name}", unit="step",
                        mininterval=5, leave=False)
        with PreemptionGuard() as guard:
            for step in range(loop.step + 1, len(plan.batches) + 1):
                indices = plan.batches[step - 1]
                with meter.phase("train"):
                    loop.train_mode()
                    loss = train_step(net, codec.collate(train, indices), loop.optimizer, loop.scheduler, plan.grad_clip)
                    loss_value = float(loss)
                    if not math.isfinite(loss_value):
                        raise Diverged(f"non-finite training loss {loss_value} at step {step} (lr={plan.lr})")
                if "training_state_bytes" not in meter.values:
                    meter.count_training_state(net, loop.optimizer)
                meter.add_train_samples(len(indices))
                loop.step, loop.running, loop.seen = step, loop.running + loss_value, loop.seen + 1
                progress.update(1)
                if step in plan.evals_at:
                    self._evaluate(net, codec, val, loop, ctx)
                loop.after_step(guard)
        progress.close()
        return loop.best

    def _evaluate(self, net, codec, val, loop: "TrainLoop", ctx) -> None:
        plan, step = loop.plan, loop.step
        with loop.meter.phase("eval"):
            val_scores = scores(predict(net, codec, val, plan.eval_batch_size), val.labels)
        point = {"step": step, "train_loss": loop.running / loop.seen, **{f"val_{k}": v for k, v in val_scores.items()}}
        plan.curve.append(point)
        if ctx.get("log_metrics"):
            ctx["log_metrics"](point, step)
        log.info("step %d/%d  loss %.4f  val acc %.4f", step, len(plan.batches), point["train_loss"], val_scores["acc"])
        loop.running, loop.seen = 0.0, 0
        if val_scores["acc"] > loop.best["acc"]:
            loop.best = {"acc": val_scores["acc"], "step": step, "state": trainable_state(net)}

    def _measure_saved(self, net, meter: CostMeter) -> None:
        out = tempfile.mkdtemp(prefix="tunebench-save-")
        try:
            self.save(net, out)
            meter.count_saved(out)
        finally:
            shutil.rmtree(out, ignore_errors=True)
