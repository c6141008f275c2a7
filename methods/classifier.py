"""Shared fit / evaluate loop for sequence-classification methods (full, LoRA, prefix, IA3, prompt).

Every method gets the same data order (from the run seed), the same number of steps and the same
evaluation schedule; only `adapt` (what is trainable) and the method's optimiser settings differ.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import f1_score
from transformers import get_linear_schedule_with_warmup

from tunebench.core import distributed as dp
from tunebench.core.engine import TrainJob, TrainSettings, batch_order
from tunebench.core.meter import CostMeter
from tunebench.core.run_context import Result, RunContext

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


def longest_first(sequences: list) -> np.ndarray:
    """Indices of `sequences`, longest first (stable): evaluation batches that pad little."""
    return np.argsort(-np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences)), kind="stable")


class TextCodec:
    """Token ids per example, padded per batch (dynamic padding)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def encode(self, split) -> Encoded:
        return encode(self.tokenizer, split, self.max_length)

    def eval_order(self, data: Encoded) -> np.ndarray:
        """Longest first: evaluation batches of similar lengths pad little (half the evaluation time on
        Rotten Tomatoes at batch 128; logits change by ~1e-7, from the shorter matrix shapes)."""
        return longest_first(data.input_ids)

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

    def eval_order(self, data: EncodedImages) -> np.ndarray:
        return np.arange(len(data))  # every image has the same shape: nothing to gain

    def collate(self, data: EncodedImages, indices) -> dict:
        indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return {"pixel_values": data.pixels[indices], "labels": torch.as_tensor(data.labels[indices.numpy()])}


def make_codec(model, task):
    if task.modality == "image":
        return ImageCodec()
    return TextCodec(model.tokenizer, int(task.meta.get("max_length", 128)))


@torch.no_grad()
def predict(net, codec, data, batch_size: int) -> np.ndarray:
    """Predicted labels in the data's order; batches follow the codec's evaluation order."""
    net.eval()
    order = dp.eval_share(codec.eval_order(data))  # several ranks: each predicts its share, then all gather
    preds = np.zeros(len(data), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        batch = codec.collate(data, indices)
        batch.pop("labels")
        preds[indices] = net(**batch).logits.argmax(-1).cpu().numpy()
    return dp.gather_values(preds, order)


def scores(preds: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "acc": float(np.mean(preds == labels)),
        "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
    }


def make_optimizer(net, method, lr: float, total_steps: int, first_step: int = 0):
    """AdamW over the trainable weights with a linear warmup / decay schedule (method.weight_decay, warmup_ratio)
    over `total_steps`, starting at `first_step` of it (a federated round continues the schedule)."""
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the adapted model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=float(method.weight_decay))
    for group in optimizer.param_groups:
        group["initial_lr"] = lr  # what a schedule that starts past step 0 scales (torch's LambdaLR contract)
    warmup = int(float(method.warmup_ratio) * total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps, last_epoch=first_step - 1)


def run_batches(n_train: int, train: TrainSettings, seed: int) -> list[np.ndarray]:
    """The run's optimiser batches: train.epochs shuffles from the run seed, capped at train.max_steps."""
    batches = batch_order(n_train, train.batch_size, train.epochs, seed)
    return batches[: train.max_steps] if train.max_steps else batches


class ClassifierJob(TrainJob):
    """Cross-entropy steps of a sequence / image classifier, scored on the validation split."""

    distributed = True  # `predict` shares the examples across ranks

    def __init__(self, name: str, net, codec, train, val, batches, optimizer, scheduler, eval_batch_size: int):
        self.name, self.net, self.codec, self.train, self.val = name, net, codec, train, val
        self.batches, self.optimizer, self.scheduler, self.eval_batch_size = batches, optimizer, scheduler, eval_batch_size

    def batch(self, step: int):
        return self.batches[step - 1]

    def loss(self, micro):
        return self.net(**self.codec.collate(self.train, micro)).loss, len(micro)

    def after_update(self, step: int) -> None:
        # AdaLoRA reallocates its rank budget after each update (peft: between optimizer.step and zero_grad).
        allocate = getattr(getattr(self.net, "base_model", None), "update_and_allocate", None)
        if allocate is not None:
            allocate(step)

    def evaluate(self) -> dict:
        return validation_scores(self.net, self.codec, self.val, self.eval_batch_size)


def validation_scores(net, codec, val, batch_size: int) -> dict:
    """`val_acc` (best-validation selection) and `val_macro_f1` of the current weights."""
    return {f"val_{k}": v for k, v in scores(predict(net, codec, val, batch_size), val.labels).items()}


def test_metrics(preds: np.ndarray, test, best_val: float | None, majority_baseline: float) -> dict:
    """A run's test scores, per-example correctness (the claim pairs arms per example) and its baselines."""
    result = {f"test_{k}": v for k, v in scores(preds, test.labels).items()}
    result.update(best_val_acc=best_val, test_correct="".join("1" if c else "0" for c in preds == test.labels),
                  majority_baseline_test_acc=majority_baseline)
    return result


class SequenceClassifierMethod:
    """Base for methods that fine-tune a (possibly adapted) sequence classifier end to end."""

    name = "base"
    modalities = ("text",)  # tasks it can fine-tune on
    generates = True  # on a generation task, the same method trains a causal LM (methods/causal_lm.py)

    def adapt(self, net, method_cfg):
        """Return the network to train; the base trains every parameter."""
        return net

    def before_training(self, net, steps: int) -> None:
        """Once the step count is known (AdaLoRA's schedule needs it)."""

    def start_from_instruction(self, net, tokenizer, instruction: str) -> None:
        """`method.generation_init: instruction` on a causal LM: only methods with a learned prompt have one."""
        raise ValueError(f"method={self.name}: generation_init=instruction starts a learned prompt from the task's "
                         f"instruction, and this method has no learned prompt (prompt or prefix tuning have one)")

    def save(self, net, out_dir: str, state_dict: dict | None = None) -> None:
        """save_pretrained (peft: the adapter alone); `state_dict`: the gathered weights of an FSDP network."""
        net.save_pretrained(out_dir, **({"state_dict": state_dict} if state_dict is not None else {}))

    def fit_evaluate(self, run: RunContext) -> Result:
        if run.task.modality == "generation":
            from .causal_lm import fit_evaluate_causal

            return fit_evaluate_causal(self, run)
        net, task, meter = run.model.net, run.task, run.meter
        codec = make_codec(run.model, task)
        train, val, test = (codec.encode(s) for s in (task.train, task.validation, task.test))
        batches = run_batches(len(train), run.train, run.seed)
        self.before_training(net, len(batches))
        optimizer, scheduler = make_optimizer(net, run.method, run.lr, len(batches))
        job = ClassifierJob(self.name, net, codec, train, val, batches, optimizer, scheduler, run.train.eval_batch_size)
        engine = run.engine(job, len(batches))
        outcome = engine.run()
        with meter.phase("eval"), run.autocast():
            test_preds = predict(net, codec, test, run.train.eval_batch_size)
        self._measure_saved(net, meter)
        result = test_metrics(test_preds, test, outcome.best_val, task.majority_baseline())
        result.update(best_step=outcome.best_step, steps=len(batches))
        return Result(result, outcome.curve, outcome.resumed_from_step, engine.prepared)

    def fit_federated(self, run: RunContext, settings, make_client_net, refinement=None) -> Result:
        """The same training split across Flower clients (tunebench.core.federated); the server scores rounds."""
        from tunebench.core import federated

        if run.task.modality not in ("text", "image"):
            raise ValueError(f"federated.strategy={settings.strategy}: method={self.name} trains a federated "
                             f"classifier on text or image tasks; this task's modality is '{run.task.modality}'")
        result = federated.fit_evaluate(ClassifierFederation(self.name, run), run, settings, make_client_net, refinement)
        self._measure_saved(run.model.net, run.meter)
        return result

    def _measure_saved(self, net, meter: CostMeter) -> None:
        state = dp.full_state_dict(net)  # FSDP: gathered (every rank takes part); rank 0 measures
        if not dp.current().is_main:
            return
        out = tempfile.mkdtemp(prefix="tunebench-save-")
        try:
            self.save(net, out, state)
            meter.count_saved(out)
        finally:
            shutil.rmtree(out, ignore_errors=True)


class ClassifierFederation:
    """The classifier family's federated plug-in (tunebench.core.federated.Federation): its ClassifierJob and
    optimiser on a client's batches, validation and test scoring of the global model on the server."""

    def __init__(self, name: str, run: RunContext):
        self.name, self.codec, self.method = name, make_codec(run.model, run.task), run.method
        self.train_split = run.task.train  # partitioned; each client encodes its own share
        self.val, self.test = self.codec.encode(run.task.validation), self.codec.encode(run.task.test)
        self.eval_batch_size = run.train.eval_batch_size
        self.majority_baseline = run.task.majority_baseline()

    def encode(self, split):
        return self.codec.encode(split)

    def optimizer(self, net, lr: float, total_steps: int, first_step: int):
        return make_optimizer(net, self.method, lr, total_steps, first_step)

    def local_job(self, net, data, batches, optimizer, scheduler) -> ClassifierJob:
        return ClassifierJob(self.name, net, self.codec, data, self.val, batches, optimizer, scheduler, self.eval_batch_size)

    def validate(self, net) -> dict:
        return validation_scores(net, self.codec, self.val, self.eval_batch_size)

    def finish(self, net, best_val) -> dict:
        return test_metrics(predict(net, self.codec, self.test, self.eval_batch_size), self.test, best_val, self.majority_baseline)
