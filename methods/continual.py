"""Continual learning through Avalanche (avalanche-lib): strategies, forgetting metrics, PEFT in the loop.

The task becomes a stream of experiences (methods/continual_streams.py: class- or domain-incremental);
an Avalanche strategy trains on them in turn and, after each experience, Avalanche's evaluation
plugin measures the accuracy on every test experience, the stream accuracy, forgetting and backward
transfer. Registered methods (one YAML each, conf/method/cl_*.yaml):

  cl_naive   Naive: fine-tune on each experience in turn (the forgetting baseline; the continual
             full-fine-tuning arm of the claim)
  cl_ewc     EWC (method.ewc_lambda)          cl_lwf  LwF (method.lwf_alpha, method.lwf_temperature)
  cl_replay  Replay (method.mem_size examples, experience-balanced buffer)
  cl_joint   JointTraining on the whole stream at once (the upper bound; one training phase, so its
             forgetting / BWT are undefined and recorded as null)
  cl_lora    the encoder with a peft LoRA adapter, trained continually with method.strategy (naive);
             `tunebench claim` compares it with cl_<strategy> (method.claim_reference)

Knobs shared by all (conf/method/_continual.yaml): method.strategy, method.peft (a peft adapter as in
conf/method/lora.yaml; without it full fine-tuning), method.stream, method.experiences,
method.class_order, method.angles / angle_step (rotated images), method.domain_tasks (text), method.lr /
image_lr, method.weight_decay. The schedule comes from `train`: train.epochs per experience, batch_size,
eval_batch_size, grad_clip. train.evals / select_best do not apply (evaluation follows each experience)
and train.max_steps is refused. Records hold the shared metrics (test_acc: stream accuracy on the
whole test stream after the last experience; test_macro_f1; best_val_acc: validation-stream accuracy
at the end) and acc_matrix[i][j] (after experience i, accuracy on test experience j), avg_acc (mean
of its last row), forgetting, bwt, exp_forgetting, exp_bwt, final_exp_acc, stream_acc per experience.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from tqdm.auto import tqdm

from tunebench.core.engine import DivergenceGuard, MeterHook, train_mode
from tunebench.core.meter import CostMeter
from tunebench.core.registry import Registry
from tunebench.core.run_context import Result, RunContext

from . import METHODS
from .classifier import SequenceClassifierMethod
from .continual_streams import build_streams

log = logging.getLogger("tunebench")

# name -> builder(method_cfg, **strategy_kwargs) -> an Avalanche strategy
STRATEGIES: Registry = Registry("continual strategy")
TRAINS_ONCE = {"joint"}  # strategies that see the whole stream in one training phase


def adapter_name(m) -> str:
    """`none` (full fine-tuning) or the peft type of `method.peft`, lower case (`lora`)."""
    return str(m.peft.peft_type).lower() if m.get("peft") else "none"


def _knob(cfg, key: str):
    value = cfg.get(key)
    if value is None:
        raise ValueError(f"method.{key} is required by method.strategy={cfg.strategy}")
    return value


@STRATEGIES.register("naive")
def naive(cfg, **common):
    from avalanche.training import Naive

    return Naive(**common)


@STRATEGIES.register("ewc")
def ewc(cfg, **common):
    from avalanche.training import EWC

    return EWC(ewc_lambda=float(_knob(cfg, "ewc_lambda")), mode="separate", **common)


@STRATEGIES.register("lwf")
def lwf(cfg, **common):
    from avalanche.training import LwF

    return LwF(alpha=float(_knob(cfg, "lwf_alpha")), temperature=float(_knob(cfg, "lwf_temperature")), **common)


@STRATEGIES.register("replay")
def replay(cfg, **common):
    from avalanche.training import Replay

    return Replay(mem_size=int(_knob(cfg, "mem_size")), **common)


@STRATEGIES.register("joint")
def joint(cfg, **common):
    from avalanche.training import JointTraining

    return JointTraining(**common)


class Logits(nn.Module):
    """`model(x) -> logits`, the call Avalanche makes, around a tunebench classifier.

    Text inputs are token ids padded to max_length; columns that are padding in the whole batch are
    dropped first (so short sentences do not pay for the longest possible review). BatchNorm layers
    whose weights are frozen (LoRA on a CNN) stay in eval mode, as in the engine (engine.train_mode)."""

    def __init__(self, net: nn.Module, modality: str, pad_token_id: int | None = None):
        super().__init__()
        self.net, self.modality, self.pad_token_id = net, modality, pad_token_id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.modality == "image":
            return self.net(pixel_values=x).logits
        mask = x != self.pad_token_id
        keep = mask.any(0)
        return self.net(input_ids=x[:, keep], attention_mask=mask[:, keep].long()).logits

    def train(self, mode: bool = True) -> "Logits":
        super().train(mode)
        if mode:
            train_mode(self.net)
        return self


def harness_plugin(meter: CostMeter, grad_clip: float | None, lr: float | None = None):
    """An Avalanche plugin with the engine's hook objects: the cost meter (MeterHook), the divergence
    guard, and gradient clipping; Avalanche keeps its own loop."""
    from avalanche.core import SupervisedPlugin

    guard, meter_hook = DivergenceGuard(lr), MeterHook(meter)

    class HarnessPlugin(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.iterations, self.losses = 0, []

        def before_update(self, strategy, **kwargs):
            if grad_clip:
                torch.nn.utils.clip_grad_norm_([p for p in strategy.model.parameters() if p.requires_grad], grad_clip)

        def after_training_iteration(self, strategy, **kwargs):
            loss = strategy.loss.item()
            guard.check(loss, f"iteration {self.iterations + 1}")
            meter_hook.after_update(strategy.model, strategy.optimizer, len(strategy.mb_x))
            self.iterations += 1
            self.losses.append(loss)

        def take_losses(self) -> list[float]:
            losses, self.losses = self.losses, []
            return losses

    return HarnessPlugin()


def evaluation_plugin():
    from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
    from avalanche.training.plugins import EvaluationPlugin

    with warnings.catch_warnings():  # no Avalanche loggers: the record is the log
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                                forgetting_metrics(experience=True, stream=True),
                                bwt_metrics(experience=True, stream=True), loggers=[])


def exp_key(metric: str, stream: str, j: int) -> str:
    return f"{metric}/eval_phase/{stream}_stream/Task000/Exp{j:03d}"


def stream_acc(row: dict, stream: str = "test") -> float:
    return float(row[f"Top1_Acc_Stream/eval_phase/{stream}_stream/Task000"])


def continual_metrics(rows: list[dict], n_exp: int, trains_once: bool) -> dict:
    """The accuracy matrix and Avalanche's forgetting / BWT from the evaluations after each experience."""
    matrix = [[float(row[exp_key("Top1_Acc_Exp", "test", j)]) for j in range(n_exp)] for row in rows]
    last = rows[-1]

    def optional(key):
        value = None if trains_once else last.get(key)
        return None if value is None else float(value)

    return {
        "acc_matrix": matrix,
        "final_exp_acc": matrix[-1],
        "avg_acc": float(np.mean(matrix[-1])),
        "stream_acc": [stream_acc(row) for row in rows],
        "forgetting": optional("StreamForgetting/eval_phase/test_stream"),
        "bwt": optional("StreamBWT/eval_phase/test_stream"),
        "exp_forgetting": [optional(exp_key("ExperienceForgetting", "test", j)) for j in range(n_exp)],
        "exp_bwt": [optional(exp_key("ExperienceBWT", "test", j)) for j in range(n_exp)],
    }


@torch.no_grad()
def predict_split(net: nn.Module, streams, split: str, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels over one split of every experience, in stream order (macro-F1, paired outcomes)."""
    net.eval()
    device = next(net.parameters()).device
    preds, labels = [], []
    for experience in streams.experiences:
        inputs, targets = experience.splits[split]
        preds.extend(net(inputs[start:start + batch_size].to(device)).argmax(-1).cpu().numpy()
                     for start in range(0, len(targets), batch_size))
        labels.append(targets.numpy())
    return np.concatenate(preds), np.concatenate(labels)


class ContinualMethod(SequenceClassifierMethod):
    """An Avalanche strategy over a stream built from the task; full fine-tuning or a LoRA adapter."""

    name = "continual"
    modalities = ("text", "image")
    fit_federated = None  # Avalanche's loop over a stream: no federated path (the classifier's would ignore the stream)

    def __init__(self):
        # The runner builds the method before it starts the cost meter: Avalanche's import (seconds,
        # ~100 MB) is then no part of any arm's measured time or peak memory.
        import avalanche.benchmarks.scenarios  # noqa: F401
        import avalanche.evaluation.metrics  # noqa: F401
        import avalanche.training  # noqa: F401

    def adapt(self, net, cfg):
        STRATEGIES.get(str(cfg.get("strategy")))  # an unknown strategy fails before any training, listing the known ones
        if cfg.get("peft"):  # the classifier family's peft builder, any peft type (methods/peft_method.py)
            from .peft_method import PeftMethod

            adapter = PeftMethod()
            adapter.name = self.name
            return adapter.adapt(net, cfg)
        return net

    def fit_evaluate(self, run: RunContext) -> Result:
        m, t, model, task, meter = run.method, run.train, run.model, run.task, run.meter
        if t.max_steps:
            raise ValueError(f"train.max_steps={t.max_steps} does not apply to continual methods: Avalanche trains "
                             f"train.epochs epochs on each experience (set train.max_steps=null)")
        self._check_scale(t)
        streams = build_streams(task, m, run.load_task, run.seed, model.tokenizer)
        benchmark = streams.benchmark()
        pad = model.tokenizer.pad_token_id if model.tokenizer is not None else None
        net = Logits(model.net, task.modality, pad)
        harness = harness_plugin(meter, t.grad_clip, run.lr)
        strategy = self._strategy(m, net, run, harness)
        rows, curve = self._run(strategy, benchmark, m, harness, meter, run.log_metrics)
        with meter.phase("eval"):
            val_acc = stream_acc(strategy.eval(benchmark.valid_stream), "valid")
            preds, labels = predict_split(net, streams, "test", t.eval_batch_size)
        self._measure_saved(model.net, meter)
        n_exp = len(streams.experiences)
        metrics = {
            "test_acc": stream_acc(rows[-1]),
            "test_macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
            "best_val_acc": val_acc,
            "test_correct": "".join("1" if c else "0" for c in preds == labels),
            "majority_baseline_test_acc": task.majority_baseline(),
            "steps": harness.iterations,
            **continual_metrics(rows, n_exp, str(m.strategy) in TRAINS_ONCE),
            "continual": {"strategy": str(m.strategy), "adapter": adapter_name(m), "stream": streams.kind,
                          "experiences": streams.summary(), "refined_experiences": streams.refined_experiences},
        }
        # No in-run checkpoints: Avalanche's loop has no step-level resume, so a preempted continual run starts over.
        return Result(metrics, curve, 0, {**t.describe(), "loop": "avalanche"})

    @staticmethod
    def _check_scale(t) -> None:
        """Avalanche's loop runs in fp32 without accumulation; refuse knobs it would silently ignore."""
        for key, value, default in (("precision", t.precision, "fp32"), ("grad_accum_steps", t.grad_accum_steps, 1),
                                    ("grad_checkpointing", t.grad_checkpointing, False), ("compile", t.compile_backend, None)):
            if value != default:
                raise ValueError(f"train.{key}={value}: continual methods train in Avalanche's own loop, which this "
                                 f"harness runs with {key}={default}; unset it for method=cl_*")

    @staticmethod
    def _strategy(m, net, run: RunContext, harness):
        params = [p for p in net.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the adapted model has no trainable parameters")
        # One parameter group (Avalanche resets the optimizer's state and parameters per experience).
        optimizer = torch.optim.AdamW(params, lr=run.lr, weight_decay=float(m.weight_decay))
        device = next(net.parameters()).device
        t = run.train
        return STRATEGIES.get(str(m.strategy))(
            m, model=net, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), train_mb_size=t.batch_size,
            train_epochs=t.epochs, eval_mb_size=t.eval_batch_size, device=device,
            plugins=[harness], evaluator=evaluation_plugin())

    @staticmethod
    def _run(strategy, benchmark, m, harness, meter: CostMeter, log_metrics) -> tuple[list[dict], list[dict]]:
        """Train experience by experience (or once, on the whole stream), evaluating the test stream after each."""
        train_stream = benchmark.train_stream
        phases = [train_stream] if str(m.strategy) in TRAINS_ONCE else list(train_stream)
        rows, curve = [], []
        for k, experiences in enumerate(tqdm(phases, desc=f"continual {m.name}", unit="exp", leave=False)):
            with meter.phase("train"):
                strategy.train(experiences)
            with meter.phase("eval"):
                rows.append(strategy.eval(benchmark.test_stream))
            losses = harness.take_losses()
            seen = rows[-1]
            point = {"step": harness.iterations, "experience": k,
                     "train_loss": float(np.mean(losses)) if losses else float("nan"),
                     "test_stream_acc": stream_acc(seen)}
            curve.append(point)
            if log_metrics:
                log_metrics(point, k + 1)
            log.info("experience %d/%d  loss %.4f  test stream acc %.4f", k + 1, len(phases), point["train_loss"],
                     point["test_stream_acc"])
        return rows, curve


METHODS.register("continual")(ContinualMethod)  # conf/method/cl_*.yaml (impl: continual, from _continual.yaml)
