"""Meta-learning with learn2learn: MAML and first-order MAML against fine-tuning baselines, N-way K-shot.

Tasks come from methods/fewshot_tasks.py (learn2learn TaskDataset on disjoint meta-train / meta-val /
meta-test classes; digits: 10 digits x 4 rotations = 40 classes). Every method is scored on the same
meta-test tasks (drawn from the run seed): accuracy on each task's query set, averaged over
method.test_tasks (>= 600 by default) tasks with a Student-t 95% confidence interval. Registered
methods (one YAML each, conf/method/<name>.yaml):

  maml        l2l.algorithms.MAML (second order) on the network below; method.fast_lr, adaptation_steps,
              test_adaptation_steps, meta_batch, iterations, zero_head (the head zeroed after every
              meta-update: Kao et al. 2022's zeroing trick)
  fomaml      the same with first_order=True
  fs_finetune the same network trained conventionally on all meta-train classes (method.pretrain_epochs),
              then per test task a new N-way head, fine-tuned on the support set with the body
              (method.finetune=all) or alone (head): method.finetune_lr, finetune_steps
  fs_probe    logistic regression (method.C) per test task on fixed features: the pretrained text
              encoder's mean-pooled embeddings, or the pixels on images; no meta-training
  fs_lora     text only: per test task, a fresh peft LoRA adapter (method.r, alpha, dropout,
              target_modules) on the pretrained encoder + a cosine head initialised at the support-set
              class means, trained method.finetune_steps steps on the support set; no meta-training
  fs_full     the same with every encoder weight trained (the full fine-tuning arm fs_lora is compared with)

The network: on images the run's image model (model=small_cnn: its body, from scratch or a
refinement's init) with an N-way head; on text a small MLP head (method.hidden) over the frozen,
mean-pooled, L2-normalised embeddings of the run's text encoder (model=minilm), cached by content.

Knobs shared by all: method.ways, shots, query (query examples per class), test_tasks, val_tasks,
meta_test_classes, meta_val_classes, class_split_seed, rotations (images; auto = 0/90/180/270),
method.lr / image_lr (the outer, pre-training or adaptation lr; times train.lr_scale). train.evals
meta-validations during (meta-)training, train.select_best keeps the best one; train.batch_size is the
pre-training batch. Records: test_acc = meta_test_acc (mean query accuracy over the meta-test tasks),
meta_test_ci95 [low, high], meta_test_std, meta_test_tasks, test_macro_f1 (mean per-task macro-F1),
best_val_acc (meta-validation accuracy), ways, shots, query, chance, test_correct (every query
prediction, task by task) and `fewshot` (the class split). Cost: `train` time is (meta-)training plus
the gradient steps on the meta-test support sets; `eval` is meta-validation and the query predictions.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn
from tqdm.auto import tqdm

from tunebench.core.engine import DivergenceGuard, Outcome, TrainJob, batch_order
from tunebench.core.run_context import Result, RunContext

from . import METHODS
from .fewshot_tasks import FewShotTask, TaskSampler, confidence_interval, meta_splits

log = logging.getLogger("tunebench")
FINETUNE_MODES = ("all", "head")


class Net(nn.Module):
    """body -> task_head: the network MAML meta-learns and fs_finetune trains conventionally."""

    def __init__(self, body: nn.Module, head: nn.Linear):
        super().__init__()
        self.body, self.task_head = body, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.task_head(self.body(x))


def feature_dim(body: nn.Module, sample: torch.Tensor) -> int:
    with torch.no_grad():
        return int(body(sample[:1]).shape[-1])


# -- text inputs --------------------------------------------------------------------------------------
def text_encoder(model) -> nn.Module:
    """The transformer under the run's sequence classifier (its new classification head is not used)."""
    return model.net.base_model


def mean_pooled(encoder: nn.Module, batch: dict) -> torch.Tensor:
    hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)


def token_batch(tokenizer, ids: list[list[int]], device) -> dict:
    batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"] if texts else []


@torch.no_grad()
def embed(model, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    encoder = text_encoder(model)
    was_training = encoder.training  # left as found: a cache miss must leave the model as a hit does
    encoder.eval()
    try:
        device = next(encoder.parameters()).device
        ids = tokenize(model.tokenizer, texts, max_length)
        out = [mean_pooled(encoder, token_batch(model.tokenizer, ids[s:s + batch_size], device)).cpu().numpy()
               for s in tqdm(range(0, len(ids), batch_size), desc="embed", unit="batch", leave=False, mininterval=5)]
    finally:
        encoder.train(was_training)
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def weights_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_embeddings(model, texts: list[str], max_length: int, cache_dir: Path | None) -> tuple[torch.Tensor, dict]:
    """Frozen sentence embeddings of `texts`, cached by (encoder weights, texts, max_length)."""
    from tunebench.core.cache import cached
    from tunebench.datasets.task import inputs_digest

    if cache_dir is None:
        return torch.as_tensor(embed(model, texts, max_length)), {}
    key = {"model": str(model.source), "weights": weights_digest(text_encoder(model)), "inputs": inputs_digest(texts)[:16],
           "max_length": max_length, "pooling": "mean, L2-normalised"}
    entry = cached(Path(cache_dir), "fewshot-embeddings", key,
                   lambda folder: np.save(folder / "embeddings.npy", embed(model, texts, max_length)))
    return torch.as_tensor(np.load(entry.path / "embeddings.npy")), entry.report()


# -- scoring --------------------------------------------------------------------------------------------
def score_tasks(predict, tasks: list[FewShotTask], what: str) -> dict:
    """Per-task query accuracy and macro-F1 of `predict(task) -> query predictions`."""
    accs, f1s, correct = [], [], []
    for task in tqdm(tasks, desc=what, unit="task", leave=False, mininterval=5):
        preds = np.asarray(predict(task))
        hits = preds == task.query_y
        accs.append(float(hits.mean()))
        f1s.append(float(f1_score(task.query_y, preds, average="macro", zero_division=0)))
        correct.append("".join("1" if h else "0" for h in hits))
    return {"accs": np.asarray(accs), "f1s": np.asarray(f1s), "correct": "".join(correct)}


class FewShotMethod:
    """Shared flow: class split and tasks, the method's (meta-)training, then scoring on the meta-test tasks."""

    name = "fewshot"
    modalities = ("text", "image")
    meta_trains = True     # reads the meta-train classes (the training split)
    text_inputs = "embeddings"  # embeddings | tokens

    def __init__(self):
        # Imported before the runner starts the cost meter (gym, scipy: seconds, tens of MB).
        import learn2learn  # noqa: F401

    def adapt(self, net, cfg):
        return net

    @property
    def reads_training_split(self) -> bool:
        """The runner refuses refinements of a split the method never reads."""
        return self.meta_trains

    # -- the flow ------------------------------------------------------------------------------------
    def fit_evaluate(self, run: RunContext) -> Result:
        self.run, self.model, self.task, self.m, self.meter = run, run.model, run.task, run.method, run.meter
        self.ways, self.shots, self.query = self._shape()
        self.lr = run.lr
        self.guard = DivergenceGuard(self.lr)
        self.device = next(run.model.net.parameters()).device
        self.splits = meta_splits(run.task, self.m, self.ways, self.shots + self.query)
        self.inputs, cache_report = self._inputs(run.cache_dir)
        val_tasks = self._tasks("meta_val", int(self.m.val_tasks), run.seed * 7919 + 2)
        test_tasks = self._tasks("meta_test", int(self.m.test_tasks), run.seed * 7919 + 1)
        self.prepare()
        outcome = self.fit(val_tasks)
        test = self._eval_time(lambda: score_tasks(lambda t: self.predict(t, "meta_test"), test_tasks,
                                                   f"meta-test {self.name}"))
        best_val = outcome.best_val if outcome else None
        if best_val is None:  # no meta-validation during training: score the val tasks like the test ones
            best_val = self._eval_time(lambda: self._val_acc(val_tasks))
        self._measure_saved()
        metrics = self._metrics(test, best_val, test_tasks, cache_report)
        if outcome is None:
            return Result(metrics)
        return Result(metrics, outcome.curve, outcome.resumed_from_step, self.engine_info)

    def _eval_time(self, work):
        """Run `work()` as eval time, less the meta-test support-set adaptation inside it (train time)."""
        train_before, start = self.meter.times["train"], time.perf_counter()
        cpu_train_before, cpu_start = self.meter.cpu_times["train"], time.process_time()
        try:
            return work()
        finally:
            self.meter.times["eval"] += time.perf_counter() - start - (self.meter.times["train"] - train_before)
            self.meter.cpu_times["eval"] += (time.process_time() - cpu_start
                                             - (self.meter.cpu_times["train"] - cpu_train_before))

    def _adapting(self, split: str):
        """Gradient steps on a support set: train time on meta-test tasks (inside _eval_time), eval time on meta-val."""
        return self.meter.phase("train") if split == "meta_test" else contextlib.nullcontext()

    def _shape(self) -> tuple[int, int, int]:
        ways, shots, query = int(self.m.ways), int(self.m.shots), int(self.m.query)
        for key, value, low in (("ways", ways, 2), ("shots", shots, 1), ("query", query, 1)):
            if value < low:
                raise ValueError(f"method.{key}={value}: expected at least {low}")
        if int(self.m.test_tasks) < 1:
            raise ValueError(f"method.test_tasks={self.m.test_tasks}: expected at least 1")
        return ways, shots, query

    def _tasks(self, split: str, n: int, seed: int) -> list[FewShotTask]:
        meta = self.splits[split]
        if not meta.classes or n <= 0:
            return []
        return TaskSampler(meta, self.ways, self.shots, self.query).sample_many(n, seed)

    def _inputs(self, cache_dir) -> tuple[dict, dict]:
        """Per meta split, what the method's network reads: pixels, frozen embeddings or token ids."""
        if self.task.modality == "image":
            return {name: s.inputs.to(self.device) for name, s in self.splits.items()}, {}
        max_length = int(self.task.meta.get("max_length", 128))
        if self.text_inputs == "tokens":
            return {name: tokenize(self.model.tokenizer, s.inputs, max_length) for name, s in self.splits.items()}, {}
        texts = [x for name in ("meta_train", "meta_val", "meta_test") for x in self.splits[name].inputs]
        vectors, report = cached_embeddings(self.model, texts, max_length, cache_dir)
        out, start = {}, 0
        for name in ("meta_train", "meta_val", "meta_test"):
            out[name] = vectors[start:start + len(self.splits[name])].to(self.device)
            start += len(self.splits[name])
        return out, report

    def _val_acc(self, val_tasks) -> float | None:
        if not val_tasks:
            return None
        return float(score_tasks(lambda t: self.predict(t, "meta_val"), val_tasks, "meta-val")["accs"].mean())

    def _metrics(self, test: dict, best_val, test_tasks, cache_report) -> dict:
        accs = test["accs"]
        low, high = confidence_interval(accs)
        mean = float(accs.mean())
        chance = 1.0 / self.ways
        return {
            "test_acc": mean, "test_macro_f1": float(test["f1s"].mean()),
            "best_val_acc": mean if best_val is None else float(best_val),
            "test_correct": test["correct"], "majority_baseline_test_acc": chance,
            "meta_test_acc": mean, "meta_test_ci95": [low, high], "meta_test_std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
            "meta_test_tasks": len(accs), "ways": self.ways, "shots": self.shots, "query": self.query, "chance": chance,
            "above_chance": bool(low > chance),
            "fewshot": {
                "method": self.name, "meta_trains": self.meta_trains, "val_tasks": int(self.m.val_tasks),
                **{f"{name}_classes": s.class_names for name, s in self.splits.items()},
                **{f"{name}_examples": len(s) for name, s in self.splits.items()},
                "dropped_classes": {name: s.dropped for name, s in self.splits.items() if s.dropped},
                "embedding_cache": cache_report,
            },
        }

    # -- what each method does -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Build what the method trains; count its parameters."""

    def fit(self, val_tasks) -> Outcome | None:
        """(Meta-)training on the meta-train classes through the engine; None: the method does not train."""
        return None

    def predict(self, task: FewShotTask, split: str) -> np.ndarray:
        raise NotImplementedError

    def saved_state(self) -> dict:
        return {}

    # -- helpers --------------------------------------------------------------------------------------
    def _count(self, parts: dict) -> None:
        self.meter.count_params(nn.ModuleDict(parts), ("task_head", "head"))

    def _measure_saved(self) -> None:
        self.meter.count_saved_state(self.saved_state())

    def _body(self) -> tuple[nn.Module, int]:
        """The network body: the run's image model without its head, or an MLP over frozen embeddings."""
        if self.task.modality == "image":
            body = self.model.net.body
            return body, feature_dim(body, self.inputs["meta_train"][:1])
        dim, hidden = self.inputs["meta_train"].shape[1], int(self.m.hidden)
        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU()).to(self.device), hidden

    def _frozen_encoder(self) -> dict:
        """The frozen text encoder that made the embeddings, for honest parameter totals."""
        if self.task.modality != "text":
            return {}
        encoder = text_encoder(self.model)
        for p in encoder.parameters():
            p.requires_grad_(False)
        return {"encoder": encoder}

    def _train(self, job: "FewShotJob", steps: int) -> Outcome:
        """(Meta-)training through the engine, with train.evals meta-validations (the best one kept)."""
        engine = self.run.engine(job, steps)
        outcome = engine.run()
        self.engine_info = engine.prepared
        return outcome


class FewShotJob(TrainJob):
    """(Meta-)training steps of a few-shot method; evaluation is the mean meta-validation accuracy."""

    def __init__(self, method: FewShotMethod, net: nn.Module, optimizer, val_tasks):
        self.method, self.name, self.net, self.optimizer = method, method.name, net, optimizer
        self.val_tasks, self.evaluates = val_tasks, bool(val_tasks)

    def train_mode(self) -> None:
        self.net.train()

    def evaluate(self) -> dict:
        return {"val_acc": self.method._val_acc(self.val_tasks)}

    def snapshot(self) -> dict:  # every weight and BatchNorm statistic: the whole network trains
        return copy.deepcopy(self.net.state_dict())

    def restore(self, state: dict) -> None:
        self.net.load_state_dict(state)


class MAMLMethod(FewShotMethod):
    """MAML / first-order MAML (learn2learn) over the network body + an N-way head."""

    name = "maml"

    def prepare(self) -> None:
        import learn2learn as l2l

        body, dim = self._body()
        self.net = Net(body, nn.Linear(dim, self.ways)).to(self.device)
        self.zero_head = bool(self.m.get("zero_head", False))
        self._zero_head()
        self.maml = l2l.algorithms.MAML(self.net, lr=float(self.m.fast_lr), first_order=bool(self.m.first_order))
        self._count({"net": self.net, **self._frozen_encoder()})

    def _zero_head(self) -> None:
        """The zeroing trick (Kao et al. 2022): every task starts from a zero head that the inner loop learns,
        so the outer loop cannot settle on label-agnostic outputs (first-order MAML otherwise collapses here)."""
        if self.zero_head:
            with torch.no_grad():
                self.net.task_head.weight.zero_()
                self.net.task_head.bias.zero_()

    def _adapt(self, learner, x, y, steps: int) -> None:
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(x), y))

    def fit(self, val_tasks) -> Outcome:
        optimizer = torch.optim.Adam(self.maml.parameters(), lr=self.lr)
        return self._train(MAMLJob(self, optimizer, val_tasks), int(self.m.iterations))

    def meta_loss(self, task: FewShotTask) -> tuple[torch.Tensor, int]:
        """Query loss of a clone adapted on the task's support set; samples seen (support x steps + query)."""
        x, steps = self.inputs["meta_train"], int(self.m.adaptation_steps)
        learner = self.maml.clone()
        ys, yq = (torch.as_tensor(v, device=self.device) for v in (task.support_y, task.query_y))
        self._adapt(learner, x[task.support], ys, steps)
        return F.cross_entropy(learner(x[task.query]), yq), len(task.support) * steps + len(task.query)

    def predict(self, task, split):
        x = self.inputs[split]
        learner = self.maml.clone(first_order=True)  # no second-order graph when only predicting
        ys = torch.as_tensor(task.support_y, device=self.device)
        with self._adapting(split), torch.enable_grad():
            learner.train()
            self._adapt(learner, x[task.support], ys, int(self.m.test_adaptation_steps))
        if split == "meta_test":
            self.meter.add_train_samples(len(task.support) * int(self.m.test_adaptation_steps))
        with torch.no_grad():
            learner.eval()
            return learner(x[task.query]).argmax(-1).cpu().numpy()

    def saved_state(self):
        return self.net.state_dict()


class FinetuneMethod(FewShotMethod):
    """The same network trained conventionally on all meta-train classes, then fine-tuned per task."""

    name = "fs_finetune"

    def prepare(self) -> None:
        mode = str(self.m.finetune)
        if mode not in FINETUNE_MODES:
            raise ValueError(f"method.finetune={mode!r}: expected one of {', '.join(FINETUNE_MODES)}")
        body, self.dim = self._body()
        classes = self.splits["meta_train"].classes
        self.net = Net(body, nn.Linear(self.dim, len(classes))).to(self.device)
        index = {c: i for i, c in enumerate(classes)}
        self.train_y = torch.as_tensor([index[int(c)] for c in self.splits["meta_train"].labels], device=self.device)
        self._count({"net": self.net, **self._frozen_encoder()})

    def fit(self, val_tasks) -> Outcome:
        batches = batch_order(len(self.train_y), self.run.train.batch_size, int(self.m.pretrain_epochs), self.run.seed)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=float(self.m.get("weight_decay", 0.0)))
        return self._train(PretrainJob(self, optimizer, val_tasks, batches), len(batches))

    def predict(self, task, split):
        x, steps = self.inputs[split], int(self.m.finetune_steps)
        ys = torch.as_tensor(task.support_y, device=self.device)
        head = nn.Linear(self.dim, self.ways).to(self.device)
        nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
        with self._adapting(split):
            if str(self.m.finetune) == "all":
                net = Net(copy.deepcopy(self.net.body), head).train()
                xs, xq = x[task.support], x[task.query]
            else:  # head only: the body's features, computed once
                net = head
                with torch.no_grad():
                    self.net.eval()
                    xs, xq = self.net.body(x[task.support]), self.net.body(x[task.query])
            optimizer = torch.optim.Adam(net.parameters(), lr=float(self.m.finetune_lr))
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(net(xs), ys).backward()
                optimizer.step()
        if split == "meta_test":
            self.meter.add_train_samples(len(task.support) * steps)
        with torch.no_grad():
            net.eval()
            return net(xq).argmax(-1).cpu().numpy()

    def saved_state(self):
        return self.net.state_dict()


class ProbeMethod(FewShotMethod):
    """Logistic regression per task on fixed features (text: frozen encoder embeddings; images: pixels)."""

    name = "fs_probe"
    meta_trains = False

    def prepare(self) -> None:
        self.features = {name: v.reshape(len(v), -1).cpu().numpy() for name, v in self.inputs.items()}
        self.dim = self.features["meta_test"].shape[1]
        self._count({"head": nn.Linear(self.dim, self.ways), **self._frozen_encoder()})  # the probe's weights

    def predict(self, task, split):
        from sklearn.linear_model import LogisticRegression

        x = self.features[split]
        with self._adapting(split):
            probe = LogisticRegression(C=float(self.m.C), max_iter=1000).fit(x[task.support], task.support_y)
        if split == "meta_test":
            self.meter.add_train_samples(len(task.support))
        return probe.predict(x[task.query])

    def saved_state(self):
        return nn.Linear(self.dim, self.ways).state_dict()


class EncoderMethod(FewShotMethod):
    """Per test task: fine-tune the pretrained text encoder (a peft adapter from `method.peft`, or every
    weight without one) + a cosine head."""

    name = "fs_encoder"
    modalities = ("text",)
    meta_trains = False
    text_inputs = "tokens"

    def prepare(self) -> None:
        self.encoder = text_encoder(self.model)
        if self.m.get("peft"):
            self.encoder = self._adapter(self.encoder)
        self.trainable = [p for p in self.encoder.parameters() if p.requires_grad]
        self.initial = {k: v.detach().clone() for k, v in self.encoder.named_parameters() if v.requires_grad}
        dim = int(self.encoder.config.hidden_size)
        self.head = nn.Linear(dim, self.ways, bias=False).to(self.device)
        self._count({"encoder": self.encoder, "head": self.head})

    def _adapter(self, encoder):
        from .peft_method import peft_config, wrap

        config = peft_config(self.m.peft)
        if config.is_prompt_learning:
            raise ValueError(f"method={self.name}: peft's {self.m.peft.peft_type} needs a task-typed PeftModel; the few-shot "
                             f"encoder takes layer adapters (LORA, LOHA, OFT, ...)")
        return wrap(encoder, config, self.name)

    def _reset(self) -> None:
        with torch.no_grad():
            for name, p in self.encoder.named_parameters():
                if name in self.initial:
                    p.copy_(self.initial[name])

    def predict(self, task, split):
        ids, tokenizer, steps = self.inputs[split], self.model.tokenizer, int(self.m.finetune_steps)
        support = token_batch(tokenizer, [ids[i] for i in task.support], self.device)
        query = token_batch(tokenizer, [ids[i] for i in task.query], self.device)
        ys = torch.as_tensor(task.support_y, device=self.device)
        scale = float(self.m.logit_scale)
        with self._adapting(split):
            self._reset()
            with torch.no_grad():  # the head starts as the nearest-class-mean classifier of the support set
                self.encoder.eval()
                emb = mean_pooled(self.encoder, support)
                self.head.weight.copy_(torch.stack([emb[ys == c].mean(0) for c in range(self.ways)]))
            optimizer = torch.optim.AdamW(self.trainable + list(self.head.parameters()), lr=self.lr,
                                          weight_decay=float(self.m.get("weight_decay", 0.0)))
            self.encoder.train()
            for _ in range(steps):
                loss = F.cross_entropy(scale * self.head(mean_pooled(self.encoder, support)), ys)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.guard.check(loss.item(), "a support-set step")
                optimizer.step()
                self.meter.count_training_state_once(nn.ModuleDict({"e": self.encoder, "h": self.head}), optimizer)
        if split == "meta_test":
            self.meter.add_train_samples(len(task.support) * steps)
        with torch.no_grad():
            self.encoder.eval()
            return (self.head(mean_pooled(self.encoder, query))).argmax(-1).cpu().numpy()

    def saved_state(self):
        # What one task's adaptation writes: the trained encoder weights (LoRA: the adapter) and the head.
        state = {f"encoder.{k}": v for k, v in self.encoder.named_parameters() if v.requires_grad}
        return {**state, "head.weight": self.head.weight}


class MAMLJob(FewShotJob):
    """One meta-update: method.meta_batch tasks sampled from the meta-train classes, each its own
    micro-batch (one backward per task, as in learn2learn's examples); the zeroing trick after the update."""

    def __init__(self, method: MAMLMethod, optimizer, val_tasks):
        super().__init__(method, method.net, optimizer, val_tasks)
        self.sampler = TaskSampler(method.splits["meta_train"], method.ways, method.shots, method.query)

    def batch(self, step: int) -> list[FewShotTask]:
        return [self.sampler.sample() for _ in range(int(self.method.m.meta_batch))]

    def micro_batches(self, batch, parts: int) -> list:
        return [[task] for task in batch]

    def loss(self, micro):
        return self.method.meta_loss(micro[0])

    def after_update(self, step: int) -> None:
        self.method._zero_head()


class PretrainJob(FewShotJob):
    """Conventional cross-entropy steps on all meta-train classes (fs_finetune's pre-training)."""

    def __init__(self, method: FinetuneMethod, optimizer, val_tasks, batches):
        super().__init__(method, method.net, optimizer, val_tasks)
        self.batches, self.x = batches, method.inputs["meta_train"]

    def batch(self, step: int):
        return self.batches[step - 1]

    def loss(self, micro):
        idx = torch.as_tensor(micro, device=self.method.device)
        return F.cross_entropy(self.net(self.x[idx]), self.method.train_y[idx]), len(idx)


METHODS.register("maml")(MAMLMethod)  # fomaml.yaml: the same with first_order: true
METHODS.register("fs_finetune")(FinetuneMethod)
METHODS.register("fs_probe")(ProbeMethod)
METHODS.register("fs_encoder")(EncoderMethod)  # fs_full.yaml (every weight), fs_lora.yaml (a peft node)
