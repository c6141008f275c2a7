"""Multimodal fine-tuning of CLIP models (open_clip) on image-text tasks.

Every mode starts from the run's CLIP (bench/core/clip_models.py: the packaged EfficientNet-Lite0 + MiniLM
towers, whose projections `refine=ssl` aligns, or any open_clip model) and, except the probe,
fine-tunes it contrastively on the training pairs with open_clip's `ClipLoss` (image and caption of a
pair are positives, the rest of the batch negatives; with class-prompt captions this is FLYP,
Goyal et al. 2022). Registered methods (one YAML each, conf/method/clip_*.yaml):

  clip_full         every weight
  clip_lora         (impl clip_peft) peft LoRA (`inject_adapter_in_model`) on `method.peft.target_modules`: the text tower's
                    attention projections (query, value) and, since EfficientNet has no attention, the
                    image tower's pointwise projection convs (conv_pwl, peft's Conv2d LoRA); the rest frozen
  clip_probe        logistic regression on the frozen, normalised image embeddings (no text at test time)
  clip_lock_image   LiT: image trunk locked (BatchNorm statistics too), text tower + projections trained
  clip_lock_text    the text transformer locked, image tower + projections trained
  clip_wiseft       WiSE-FT (Wortsman et al. 2022): full fine-tuning, then the weights
                    (1 - alpha) * zero-shot + alpha * fine-tuned for each alpha in `method.alphas`;
                    the alpha with the best validation zero-shot accuracy is the run's result

Metrics (on top of the shared ones): `zero_shot_acc` (class-name prompts, `task.meta.prompt_template`
or `method.prompt_template`, nearest prompt embedding), `zero_shot_acc_start` (the model before
fine-tuning: the alpha = 0 end of WiSE-FT), `recall_i2t_1/5`, `recall_t2i_1/5` on the test pairs.
`test_acc` is the zero-shot accuracy (the probe: its own accuracy); `test_correct` its per-image
outcomes (the claim's paired bootstrap). A task without classes (pairs_csv without a label column)
has no zero-shot accuracy: `test_acc` is then image->text recall@1 and `test_metric` says so.
"""
from __future__ import annotations

import copy
import logging
import math

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from tunebench.datasets.pairs import class_prompts
from tunebench.core.engine import Outcome, TrainJob
from tunebench.core.run_context import Result, RunContext

from . import METHODS
from .classifier import run_batches

log = logging.getLogger("tunebench")


class ClipMethod:
    name = "clip_full"
    modalities = ("image-text",)
    trains = True
    keeps_start = False  # WiSE-FT keeps a copy of the zero-shot weights (memory only it should pay)

    def adapt(self, net, cfg):
        """Which weights train (the runner counts parameters after this)."""
        for p in net.parameters():
            p.requires_grad = True
        return net

    # -- flow -----------------------------------------------------------------------------------------
    def fit_evaluate(self, run: RunContext) -> Result:
        self.run, self.model, self.task, self.m, self.meter = run, run.model, run.task, run.method, run.meter
        self.device = next(run.model.net.parameters()).device
        self.prompts = class_prompts(run.task, run.method.get("prompt_template") or None)
        check_captions(run.task)
        with self.meter.phase("eval"), run.autocast():
            start = self.evaluate("test")
        self.start_state = copy.deepcopy(run.model.net.state_dict()) if self.keeps_start else None
        outcome = self.fit() if self.trains else None
        result = self.finish(start, outcome.best_val if outcome else None)
        self._count_saved()
        if outcome is None:
            return Result(result)
        return Result(result, outcome.curve, outcome.resumed_from_step, self.engine_info)

    def finish(self, start: dict, best_val) -> dict:
        with self.meter.phase("eval"), self.run.autocast():
            test = self.evaluate("test") if self.trains else start  # untrained weights: already scored
            if best_val is None:
                best_val = self.val_score()
        return self.metrics(test, start, best_val)

    # -- training -------------------------------------------------------------------------------------
    def fit(self) -> Outcome:
        from open_clip.loss import ClipLoss

        run, net = self.run, self.model.net
        if run.train.grad_accum_steps > 1:
            raise ValueError(
                f"train.grad_accum_steps={run.train.grad_accum_steps}: CLIP's contrastive loss uses the other pairs of the "
                f"batch as negatives, so micro-batches would change the loss itself (open_clip's feature-caching "
                f"accumulation is not implemented); use 1 and a smaller train.batch_size")
        batches = run_batches(len(self.task.train), run.train, run.seed)
        params = [p for p in net.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"method={self.name} left no trainable weight")
        optimizer = torch.optim.AdamW(param_groups(net, float(self.m.weight_decay)), lr=run.lr)
        scheduler = cosine_with_warmup(optimizer, len(batches), float(self.m.warmup_ratio))
        engine = run.engine(ClipJob(self, batches, optimizer, scheduler, ClipLoss()), len(batches))
        outcome = engine.run()
        self.engine_info = engine.prepared
        return outcome

    def train_mode(self) -> None:
        """Dropout on, BatchNorm statistics fixed: batch statistics of a few dozen images from a new domain
        would replace ImageNet's in a step and undo the alignment (measured: loss 2.0 -> 5.2 at step 1)."""
        self.model.net.train()
        freeze_batchnorm(self.model.net)

    # -- scoring --------------------------------------------------------------------------------------
    def evaluate(self, split: str, retrieval: bool = True) -> dict:
        """Zero-shot predictions and (test) retrieval recall of the current weights on `split`."""
        from tunebench.core.clip_models import embed_images, embed_texts, retrieval_recall, zero_shot_predictions

        data = getattr(self.task, split)
        images = embed_images(self.model, data.x)
        out = {"zero_shot_acc": None, "preds": None}
        if self.prompts:
            preds = zero_shot_predictions(images, embed_texts(self.model, self.prompts))
            out.update(zero_shot_acc=float(np.mean(preds == data.y)), preds=preds)
        if retrieval:
            out.update(retrieval_recall(images, list(data.captions), lambda texts: embed_texts(self.model, texts),
                                        key_of=lambda texts: [tuple(row.tolist()) for row in self.model.tokens(texts)]))
        return out

    def val_score(self) -> float:
        """Validation zero-shot accuracy; image->text recall@1 for pairs without classes."""
        if self.prompts:
            return self.evaluate("validation", retrieval=False)["zero_shot_acc"]
        return self.evaluate("validation")["recall_i2t_1"]

    def metrics(self, test: dict, start: dict, best_val) -> dict:
        y = self.task.test.y
        if test["preds"] is not None:
            preds, metric = test["preds"], "zero_shot_acc"
            acc, f1 = float(np.mean(preds == y)), float(f1_score(y, preds, average="macro", zero_division=0))
            correct = "".join("1" if c else "0" for c in preds == y)
        else:
            acc, f1, correct, metric = test["recall_i2t_1"], None, None, "recall_i2t_1"
        recall = {k: v for k, v in test.items() if k.startswith("recall_")}
        return {"test_acc": acc, "test_macro_f1": f1, "best_val_acc": best_val, "test_metric": metric,
                "majority_baseline_test_acc": self.task.majority_baseline() if len(self.task.classes) else None,
                "test_correct": correct, "zero_shot_acc": test["zero_shot_acc"],
                "zero_shot_acc_start": start["zero_shot_acc"], **recall,
                **{f"{k}_start": v for k, v in start.items() if k.startswith("recall_")}}

    def _count_saved(self) -> None:
        """What the method has to store: the trained weights (LoRA: the adapter)."""
        self.meter.count_saved_state(self.saved_state())

    def saved_state(self) -> dict:
        return {k: v for k, v in self.model.net.named_parameters() if v.requires_grad}


class ClipJob(TrainJob):
    """Contrastive steps on image-caption pairs (open_clip's ClipLoss), scored by validation zero-shot accuracy."""

    def __init__(self, method: ClipMethod, batches, optimizer, scheduler, loss_fn):
        self.method, self.name, self.net = method, method.name, method.model.net
        self.batches, self.optimizer, self.scheduler, self.loss_fn = batches, optimizer, scheduler, loss_fn

    def batch(self, step: int):
        return self.batches[step - 1]

    def loss(self, idx):
        model, train, device = self.method.model, self.method.task.train, self.method.device
        images = model.images([train.x[i] for i in idx], device)
        texts = model.tokens([train.captions[i] for i in idx], device)
        image_features, text_features, scale = self.net(images, texts)[:3]
        return self.loss_fn(image_features, text_features, scale), len(idx)

    def train_mode(self) -> None:
        self.method.train_mode()

    def after_update(self, step: int) -> None:
        with torch.no_grad():  # open_clip's training clamps the learned temperature at 100
            self.net.logit_scale.clamp_(0, math.log(100))

    def evaluate(self) -> dict:
        return {"val_acc": self.method.val_score()}


def param_groups(net: nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's recipe: no weight decay on gains, biases and the logit scale (1-d tensors)."""
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def check_captions(task) -> None:
    for name in ("train", "validation", "test"):
        split = getattr(task, name)
        if getattr(split, "captions", None) is None:
            raise ValueError(f"data={task.name}: the {name} split has no captions; CLIP methods need image-caption pairs")


def cosine_with_warmup(optimizer, total: int, warmup_ratio: float):
    warmup = int(round(total * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm layers of a locked tower keep their statistics (eval mode) while the rest trains."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def unlock_projection(net, tower: str):
    """A locked tower's projection still trains (open_clip's ViT / text transformer locks freeze it too)."""
    from tunebench.core.clip_models import tower_projection_names

    names = set(tower_projection_names(net, tower))
    for n, p in net.named_parameters():
        if n in names:
            p.requires_grad = True
    return net


class LockTowerMethod(ClipMethod):
    """One tower locked (`method.locked_tower`: image, as LiT, or text); its projection, the other tower
    and the logit scale train."""

    name = "clip_lock"

    def adapt(self, net, cfg):
        super().adapt(net, cfg)
        tower = str(cfg.get("locked_tower"))
        if tower == "image":
            # BatchNorm statistics stay fixed through train_mode: freeze_bn_stats=True swaps in timm's
            # FrozenBatchNorm2d, which drops EfficientNet's fused BN activation (measured: zero-shot
            # accuracy 0.95 -> 0.10 before any step).
            net.lock_image_tower(unlocked_groups=0, freeze_bn_stats=False)
        elif tower == "text":
            net.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
        else:
            raise ValueError(f"method.locked_tower={tower!r}: expected image or text")
        return unlock_projection(net, tower)


class PeftMethod(ClipMethod):
    """A peft adapter (`method.peft`, any layer-adapting type) injected into both towers; the rest frozen."""

    name = "clip_peft"

    def adapt(self, net, cfg):
        from peft import inject_adapter_in_model

        from .peft_method import peft_config

        config = peft_config(cfg.peft)
        if config.is_prompt_learning:
            raise ValueError(f"method={self.name}: peft's {cfg.peft.peft_type} adds virtual tokens to one model's input; "
                             f"CLIP takes layer adapters (LORA, LOHA, OFT, ...)")
        try:
            net = inject_adapter_in_model(config, net)
        except ValueError as e:
            raise ValueError(f"method.peft.target_modules={config.target_modules} matched no layer peft can wrap in this "
                             f"CLIP ({e})") from e
        # peft leaves only the adapter's weights trainable; also_train prefixes and the logit scale train too.
        adapter = {n for n, p in net.named_parameters() if p.requires_grad}
        extra = tuple(cfg.get("also_train") or ())
        for n, p in net.named_parameters():
            p.requires_grad = n in adapter or n.startswith(extra) or n == "logit_scale"
        return net


class ProbeMethod(ClipMethod):
    """Logistic regression on frozen image embeddings; zero-shot and recall are the start model's."""

    name = "clip_probe"
    trains = False

    def adapt(self, net, cfg):
        for p in net.parameters():
            p.requires_grad = False
        return net

    def fit_evaluate(self, run: RunContext) -> Result:
        from sklearn.linear_model import LogisticRegression

        from tunebench.core.clip_models import embed_images

        model, task, meter = run.model, run.task, run.meter
        if not task.classes:
            raise ValueError(f"method=clip_probe classifies images; data={task.name} has no class labels")
        result = super().fit_evaluate(run)
        with meter.phase("train"):
            features = embed_images(model, task.train.x).cpu().numpy()
            probe = LogisticRegression(C=float(run.method.C), max_iter=int(run.method.max_iter)).fit(features, task.train.y)
            meter.add_train_samples(len(task.train))
        self.probe = probe
        with meter.phase("eval"):
            val = probe.score(embed_images(model, task.validation.x).cpu().numpy(), task.validation.y)
            preds = probe.predict(embed_images(model, task.test.x).cpu().numpy())
        y = task.test.y
        result.metrics.update(test_acc=float(np.mean(preds == y)), best_val_acc=float(val), test_metric="probe_acc",
                                 test_macro_f1=float(f1_score(y, preds, average="macro", zero_division=0)),
                                 test_correct="".join("1" if c else "0" for c in preds == y))
        n = int(probe.coef_.size + probe.intercept_.size)  # the probe is all that trains (the CLIP is frozen)
        total = int(self.meter.values.get("params_total", 0)) + n
        self.meter.values.update(params_trainable=n, params_trainable_excl_head=0, params_total=total,
                                 trainable_pct=100.0 * n / total)
        self._count_saved()
        return result

    def saved_state(self) -> dict:
        probe = getattr(self, "probe", None)
        if probe is None:
            return {}
        return {"coef": torch.as_tensor(probe.coef_, dtype=torch.float32), "intercept": torch.as_tensor(probe.intercept_, dtype=torch.float32)}


class WiseFTMethod(ClipMethod):
    """Full fine-tuning, then weight-space ensembles with the zero-shot model over `method.alphas`."""

    name = "clip_wiseft"
    keeps_start = True

    def finish(self, start: dict, best_val) -> dict:
        net = self.model.net
        tuned = {k: v.detach().clone() for k, v in net.state_dict().items()}
        alphas = [float(a) for a in self.m.alphas]
        if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
            raise ValueError(f"method.alphas={alphas}: WiSE-FT mixing weights must be in [0, 1]")
        curve, best = [], None
        with self.meter.phase("eval"):
            for alpha in alphas:
                net.load_state_dict(interpolate(self.start_state, tuned, alpha))
                val, test = self.val_score(), self.evaluate("test")
                curve.append({"alpha": alpha, "val_acc": val, "test_acc": test["zero_shot_acc"],
                              **{k: v for k, v in test.items() if k.startswith("recall_")}})
                if best is None or val > best[1]:
                    best = (alpha, val, test)
        alpha, val, test = best
        net.load_state_dict(interpolate(self.start_state, tuned, alpha))
        out = self.metrics(test, start, val)
        out.update(wiseft_alpha=alpha, wiseft_curve=curve, fine_tuned_val_acc=best_val)
        return out


def interpolate(zero_shot: dict, tuned: dict, alpha: float) -> dict:
    """(1 - alpha) * zero-shot + alpha * fine-tuned for float tensors (torch.lerp: alpha 0 gives the
    zero-shot weights bit for bit); integer buffers (BatchNorm's batch counters) from the end alpha is nearer."""
    return {k: torch.lerp(z, tuned[k], alpha) if z.is_floating_point() else (tuned[k] if alpha >= 0.5 else z).clone()
            for k, z in zero_shot.items()}


METHODS.register("clip_full")(ClipMethod)
METHODS.register("clip_peft")(PeftMethod)  # clip_lora.yaml
METHODS.register("clip_probe")(ProbeMethod)
METHODS.register("clip_lock")(LockTowerMethod)  # clip_lock_image.yaml, clip_lock_text.yaml
METHODS.register("clip_wiseft")(WiseFTMethod)
