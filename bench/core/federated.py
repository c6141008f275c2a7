"""Federated training of one cell with Flower: K clients each hold one partition of the training split,
train locally through the shared engine and send their trainable weights to a server that aggregates them
with a Flower strategy (FedAvg, FedProx, FedAdam, ... any class of `flwr.serverapp.strategy`).

The runtime is Flower's simulation engine (`flwr.simulation.run_simulation`, Ray actors as clients); this
module only wires a family's training into it and measures what Flower does not:

- **What travels.** A client sends what its training changed (`exchanged_state`): the adapter, and the
  task head it trains, for peft methods (the frozen base is the same pretrained model on every client and
  never travels), every weight for full fine-tuning. Bytes down (server -> sampled clients) and up (replies)
  are counted per round as tensor bytes, plus Flower's serialised size.
- **Same update as one process.** A client's data order is drawn from the run seed over its own partition
  (sorted indices), its randomness starts from the run's RNG state at the start of training and continues
  across rounds (kept in the client's Flower context), and its learning rate follows the family's one
  schedule over rounds x local steps. So 1 client, 1 round and the run's steps train exactly the centralised run.
- **Failures are named.** A client that raises, or a round with fewer replies than `federated.min_replies`
  of the sampled clients, fails the cell (Flower alone would log "0 results and 2 failures" and finish).
- **Evaluation** is the server's: the global model after each round on the shared validation split (the
  round curve, best-round selection), the test split once at the end.
- **Checkpoint / resume** at round boundaries, with the run's checkpoint file and the engine's rules
  (`train.checkpoint_every`, the preemption signal that SLURM / submitit send): the global weights, the
  strategy object (FedAdam's moments, the DP accountant), the server's ledger and RNG, and each client's RNG
  state (clients return it with their weights). A requeued cell starts Flower again at the next round and
  trains the same model as an uninterrupted run.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tunebench.core.checkpoint import PreemptionGuard, RunCheckpoint
from tunebench.core.engine import (Engine, TrainJob, TrainSettings, batch_order, rng_state, set_rng_state,
                                   trainable_state)
from tunebench.core.meter import CostMeter

log = logging.getLogger("tunebench")

PARTITIONS = ("iid", "dirichlet")


# -- settings -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FederatedSettings:
    """The `federated:` config node, checked. `strategy: none` trains the cell centrally (the default)."""

    strategy: str = "none"
    clients: int = 4
    rounds: int = 5
    local_steps: int = 10
    fraction: float = 1.0
    partition: str = "iid"
    alpha: float | None = None
    min_partition_size: int = 10
    strategy_args: dict = field(default_factory=dict)
    min_replies: float = 1.0
    client_cpus: float = 1.0
    client_gpus: Any = "auto"
    timeout_s: float = 3600.0
    refine_at: str = "clients"
    dp: "PrivacySettings" = None  # set in __post_init__ when not given

    def __post_init__(self):
        if self.dp is None:
            object.__setattr__(self, "dp", PrivacySettings())

    @property
    def enabled(self) -> bool:
        return self.strategy != "none"

    @classmethod
    def from_config(cls, node) -> "FederatedSettings":
        from omegaconf import OmegaConf

        values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"federated.{unknown[0]}: unknown key; the federated keys are "
                             f"{', '.join(sorted(cls.__dataclass_fields__))}")
        settings = cls(**{k: _checked_setting(k, v) for k, v in values.items()})
        if settings.partition == "dirichlet" and settings.alpha is None:
            raise ValueError("federated.partition=dirichlet: federated.alpha must be a positive number (e.g. partition=dirichlet_1)")
        if settings.enabled:
            strategy_class(settings.strategy)  # an unknown strategy fails before any work
        return settings

    def describe(self) -> dict:
        return {k: (getattr(self, k).__dict__ if k == "dp" else getattr(self, k)) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class PrivacySettings:
    """`federated.dp`: Flower's central DP at the client level. noise_multiplier 0: off."""
    noise_multiplier: float = 0.0
    clipping_norm: float = 1.0
    delta: float = 1e-5

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0

    @classmethod
    def from_config(cls, values) -> "PrivacySettings":
        if values is None:
            return cls()
        if not isinstance(values, dict):
            raise ValueError(f"federated.dp={values!r}: expected a mapping with noise_multiplier, clipping_norm, delta")
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"federated.dp.{unknown[0]}: unknown key; expected noise_multiplier, clipping_norm, delta")
        for key, value in values.items():
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and (
                value >= 0 if key == "noise_multiplier" else 0 < value < 1 if key == "delta" else value > 0)
            if not ok:
                expected = {"noise_multiplier": "a number >= 0 (0: no DP)", "delta": "a number in (0, 1)",
                            "clipping_norm": "a positive number"}[key]
                raise ValueError(f"federated.dp.{key}={value!r}: expected {expected}")
        return cls(**{k: float(v) for k, v in values.items()})


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _whole(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


# key: (is the value fine?, what was expected); `dp` and `strategy_args` are nodes of their own (below).
_CHECKS = {
    "strategy": (lambda v: isinstance(v, str) and bool(v), "none or a strategy of flwr.serverapp.strategy (fedavg, fedprox, ...)"),
    "clients": (_whole, "a whole number >= 1"),
    "rounds": (_whole, "a whole number >= 1"),
    "local_steps": (_whole, "a whole number >= 1"),
    "min_partition_size": (_whole, "a whole number >= 1"),
    "fraction": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "min_replies": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "partition": (lambda v: v in PARTITIONS, " | ".join(PARTITIONS)),
    "alpha": (lambda v: v is None or _number(v) and v > 0, "a positive number (the Dirichlet concentration) or null"),
    "client_cpus": (lambda v: _number(v) and v > 0, "a positive number"),
    "client_gpus": (lambda v: v == "auto" or _number(v) and v >= 0,
                    "auto (one GPU per client when the run is on CUDA) or a number >= 0 (a fraction shares a GPU)"),
    "timeout_s": (lambda v: _number(v) and v > 0, "a positive number"),
    "refine_at": (lambda v: v in ("clients", "server"),
                  "clients (each client refines its own partition) | server (the pooled split, before partitioning)"),
}


def _checked_setting(key: str, value):
    """One `federated.<key>` value, converted, or a ValueError that names the key and what it expects."""
    if key == "dp":
        return PrivacySettings.from_config(value)
    if key == "strategy_args":
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"federated.strategy_args={value!r}: expected a mapping of keyword arguments for the Flower strategy")
        return dict(value or {})
    fine, expected = _CHECKS[key]
    if not fine(value):
        raise ValueError(f"federated.{key}={value!r}: expected {expected}")
    if key == "strategy":
        return value.lower()
    return float(value) if isinstance(value, float) or key in ("fraction", "min_replies", "client_cpus", "timeout_s") else value


def strategy_class(name: str):
    """The Flower strategy class called `name` (case-insensitive)."""
    from flwr.serverapp import strategy as strategies

    # Not offered: the DP wrappers (federated.dp wraps a strategy in one) and the XGBoost-tree strategies.
    known = {n.lower(): n for n in dir(strategies) if isinstance(getattr(strategies, n), type)
             and issubclass(getattr(strategies, n), strategies.Strategy) and n != "Strategy"
             and not n.startswith(("DifferentialPrivacy", "FedXgb"))}
    if name not in known:
        raise ValueError(f"federated.strategy={name!r}: not a Flower strategy; expected none or one of "
                         f"{', '.join(sorted(known))}")
    return getattr(strategies, known[name])


# -- partitions ---------------------------------------------------------------------------------------
def partition(labels: np.ndarray, settings: FederatedSettings, seed: int) -> list[np.ndarray]:
    """Each client's training indices (sorted), from flwr-datasets' partitioners over the split's labels."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    labels = np.asarray(labels)
    if settings.clients > len(labels):
        raise ValueError(f"federated.clients={settings.clients}: the training split has only {len(labels)} examples")
    # Shuffled first, as flwr-datasets' FederatedDataset does: IidPartitioner cuts contiguous shards, and a
    # split stored by class would give each client one class.
    table = Dataset.from_dict({"label": labels.tolist(), "index": list(range(len(labels)))}).shuffle(seed=seed)
    if settings.partition == "iid":
        partitioner = IidPartitioner(num_partitions=settings.clients)
    else:
        partitioner = DirichletPartitioner(num_partitions=settings.clients, partition_by="label", alpha=settings.alpha,
                                           min_partition_size=settings.min_partition_size, seed=seed)
    partitioner.dataset = table
    try:
        parts = [np.sort(np.asarray(partitioner.load_partition(k)["index"], dtype=np.int64))
                 for k in range(settings.clients)]
    except ValueError as error:  # Dirichlet: no draw gave every client min_partition_size examples
        raise ValueError(f"federated.partition=dirichlet alpha={settings.alpha} clients={settings.clients}: {error} "
                         f"(lower federated.min_partition_size or use fewer clients)") from None
    return parts


def label_counts(labels: np.ndarray, parts: list[np.ndarray]) -> list[dict]:
    """Per client: its size and examples per class (the record's account of the heterogeneity)."""
    labels = np.asarray(labels)
    return [{"examples": int(len(p)), "per_class": {str(c): int(n) for c, n in zip(*np.unique(labels[p], return_counts=True))}}
            for p in parts]


def client_batches(indices: np.ndarray, batch_size: int, round_: int, local_steps: int, seed: int) -> list[np.ndarray]:
    """Round `round_`'s batches of one client: the next `local_steps` batches of its own stream of shuffled
    epochs over its partition, drawn from the run seed (1 client = the centralised run's order)."""
    needed = round_ * local_steps
    per_epoch = math.ceil(len(indices) / batch_size)
    stream = batch_order(len(indices), batch_size, math.ceil(needed / per_epoch), seed)
    return [indices[b] for b in stream[needed - local_steps: needed]]


# -- what a family provides -----------------------------------------------------------------------------
class Federation:
    """A family's federated plug-in (built on the server from the run; pickled to the clients).

    `train_split` is partitioned over the clients (by its labels); `encode` turns a client's (possibly
    refined) share into what `local_job`, the family's TrainJob, trains on, with the family's `optimizer`; `validate` scores the global
    model on the validation split (`val_acc` selects the best round); `finish` gives the run's metrics from
    the final global model (test split) and the best validation score."""

    train_split: Any

    def encode(self, split) -> Any:
        raise NotImplementedError

    def optimizer(self, net, lr: float, total_steps: int, first_step: int) -> tuple:
        """(optimizer, scheduler) of the family's own run, its schedule over `total_steps` begun at `first_step`."""
        raise NotImplementedError

    def local_job(self, net, data, batches: list[np.ndarray], optimizer, scheduler) -> TrainJob:
        raise NotImplementedError

    def validate(self, net) -> dict:
        raise NotImplementedError

    def finish(self, net, best_val: float | None) -> dict:
        raise NotImplementedError


@dataclass
class ClientRefinement:
    """The run's refinement chain, applied by each client to its own share (federated.refine_at=clients)."""
    chain: Any          # the `refine` config node
    context: Any        # tunebench.datasets.refine.RefineContext
    task: Any           # the run's task: a client's share replaces its training split

    def apply(self, share) -> tuple[Any, list[dict]]:
        from tunebench.datasets.refine import apply_chain

        task, init, reports = apply_chain(self.task.with_train(share), self.chain, self.context)
        if init is not None:
            names = ", ".join(r["name"] for r in reports)
            raise ValueError(f"refine={names} returns initial weights: at the clients each would start from its own; "
                             f"run it with federated.refine_at=server")
        return task.train, [counts_only(r) for r in reports]


def counts_only(report: dict) -> dict:
    """What a client tells the server about its refinement: numbers, names and settings, never its examples
    (a report's sample sentences or flagged rows stay on the client; `withheld` names what was left out)."""
    def plain(value) -> bool:
        if isinstance(value, (bool, int, float)) or value is None:
            return True
        if isinstance(value, str):
            return len(value) <= 200
        if isinstance(value, (list, tuple)):
            return all(isinstance(v, (bool, int, float)) for v in value)
        if isinstance(value, dict):
            return all(plain(v) and not isinstance(v, (list, dict)) for v in value.values())
        return False

    kept = {k: v for k, v in report.items() if plain(v)}
    withheld = sorted(set(report) - set(kept))
    return {**kept, **({"withheld": withheld} if withheld else {})}


class ProximalJob(TrainJob):
    """FedProx's client objective: the family's loss + mu/2 * ||w - w_global||^2 over the trainable weights."""

    def __init__(self, job: TrainJob, mu: float):
        self.job, self.mu = job, mu
        self.name, self.net, self.optimizer, self.scheduler = job.name, job.net, job.optimizer, job.scheduler
        self.evaluates = False
        self.anchor = {k: v.detach().clone() for k, v in job.net.named_parameters() if v.requires_grad}

    def batch(self, step):
        return self.job.batch(step)

    def loss(self, micro):
        loss, samples = self.job.loss(micro)
        params = dict(self.net.named_parameters())
        drift = sum(((params[k] - w) ** 2).sum() for k, w in self.anchor.items())
        return loss + 0.5 * self.mu * drift, samples

    def loss_units(self, items):
        return self.job.loss_units(items)

    def train_mode(self):
        self.job.train_mode()

    def after_update(self, step):
        self.job.after_update(step)


def _trained_buffers(net: torch.nn.Module):
    """(name, tensor) of the running statistics of BatchNorm layers that train."""
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in module.parameters()):
            yield from ((f"{name}.{b}", t) for b, t in module.named_buffers(recurse=False))


def exchanged_state(net: torch.nn.Module) -> dict:
    """What a client sends and the server averages: the trainable weights, plus the running statistics of
    BatchNorm layers that train (full fine-tuning of a CNN: FedAvg averages them like weights). A peft
    method's frozen BatchNorm layers keep their statistics (engine.train_mode), so nothing of the base travels."""
    return {**trainable_state(net), **{k: t.detach().clone() for k, t in _trained_buffers(net)}}


def exchanged_names(net: torch.nn.Module) -> set[str]:
    """The keys of `exchanged_state`, without copying the tensors."""
    return {k for k, p in net.named_parameters() if p.requires_grad} | {k for k, _ in _trained_buffers(net)}


def record_bytes(arrays) -> int:
    """Tensor bytes of a Flower ArrayRecord, from each array's dtype and shape (without deserialising it)."""
    return int(sum(np.dtype(a.dtype).itemsize * math.prod(a.shape) for a in arrays.values()))


# -- the client ---------------------------------------------------------------------------------------
@dataclass
class ClientPlan:
    """Everything a client process needs (pickled into each Ray actor once)."""
    federation: Federation
    parts: list[np.ndarray]
    settings: FederatedSettings
    train: TrainSettings
    lr: float
    seed: int
    start_rng: bytes
    make_net: Callable[[], torch.nn.Module]
    refinement: ClientRefinement | None = None
    fail_client: int | None = None  # tests: this client raises (TUNEBENCH_FEDERATED_FAIL)
    client_rngs: dict = field(default_factory=dict)  # a resumed run: each client's RNG state at the checkpoint


_CLIENT_NET: dict = {}
_CLIENT_DATA: dict = {}


def _client_data(plan: ClientPlan, partition_id: int) -> tuple[Any, list[dict]]:
    """A client's share of the training split, refined by the client itself where the run refines, encoded
    (once per actor process and client)."""
    if partition_id not in _CLIENT_DATA:
        share = plan.federation.train_split.subset(plan.parts[partition_id])
        reports = []
        if plan.refinement is not None:
            share, reports = plan.refinement.apply(share)
        _CLIENT_DATA[partition_id] = (plan.federation.encode(share), reports)
    return _CLIENT_DATA[partition_id]


def _client_net(plan: ClientPlan) -> torch.nn.Module:
    """The client's network, built once per actor process from the run's model config."""
    if "net" not in _CLIENT_NET:
        torch.set_num_threads(max(1, int(plan.settings.client_cpus)))
        _CLIENT_NET["net"] = plan.make_net()
    return _CLIENT_NET["net"]


def train_client(plan: ClientPlan, partition_id: int, round_: int, global_state: dict, rng: bytes | None,
                 mu: float) -> tuple[dict, dict, list, bytes]:
    """One client's local training in one round: (what it trained, its metrics, its refinement reports, its
    RNG state after)."""
    try:
        return _train_client(plan, partition_id, round_, global_state, rng, mu)
    except Exception as error:  # named for the server's failure message (Flower passes the text on)
        raise RuntimeError(f"client {partition_id}, round {round_}: {type(error).__name__}: {error}") from error


def _reason(text: str) -> str:
    """The client's own message out of Flower's / Ray's error text (which wraps it in two tracebacks)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    found = re.findall(r"Message: (.*?)'?>?\s*$", text, flags=re.M)
    if found:
        return found[-1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


def _train_client(plan: ClientPlan, partition_id: int, round_: int, global_state: dict, rng: bytes | None,
                  mu: float) -> tuple[dict, dict, list, bytes]:
    if plan.fail_client == partition_id:
        raise RuntimeError("raised on purpose (TUNEBENCH_FEDERATED_FAIL)")
    net = _client_net(plan)
    missing = set(global_state) - exchanged_names(net)
    if missing:
        raise ValueError(f"the server sent weights this client does not train: {sorted(missing)[:3]}")
    with torch.no_grad():
        net.load_state_dict(global_state, strict=False)
    set_rng_state(pickle.loads(rng or plan.client_rngs.get(partition_id) or plan.start_rng))
    data, reports = _client_data(plan, partition_id)
    batches = client_batches(np.arange(len(data)), plan.train.batch_size, round_, plan.settings.local_steps, plan.seed)
    steps = plan.settings.local_steps
    optimizer, scheduler = plan.federation.optimizer(net, plan.lr, plan.settings.rounds * steps, (round_ - 1) * steps)
    job = plan.federation.local_job(net, data, batches, optimizer, scheduler)
    job.evaluates = False
    if mu > 0:
        job = ProximalJob(job, mu)
    meter = CostMeter(str(next(net.parameters()).device)).start()
    try:
        Engine(job, len(batches), plan.train, meter, lr=plan.lr).run()
    finally:
        meter.stop()
    cost = meter.summary()
    state = exchanged_state(net)
    metrics = {"num-examples": int(len(data)), UNIFORM_WEIGHT: 1.0, "partition-id": int(partition_id),
               "train_seconds": float(cost["train_seconds"]), "train_samples": int(cost["train_samples"]),
               "peak_memory_bytes": int(cost.get("peak_memory_bytes") or 0),
               "training_state_bytes": int(cost.get("training_state_bytes") or 0)}
    return state, metrics, reports, pickle.dumps(rng_state())


def client_app(plan: ClientPlan):
    """Flower's ClientApp around `train_client`; the client's RNG state lives in its Flower context."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition_id = int(context.node_config["partition-id"])
        config = msg.content["config"]
        kept = context.state.config_records.get("tunebench")
        state, metrics, reports, rng = train_client(
            plan, partition_id, int(config["server-round"]), msg.content["arrays"].to_torch_state_dict(),
            kept["rng"] if kept else None, float(config.get("proximal-mu", 0.0)))
        context.state["tunebench"] = ConfigRecord({"rng": rng})
        # the RNG state goes back too (not counted as traffic: it is not a weight) so a checkpoint can keep it
        return Message(RecordDict({"arrays": ArrayRecord.from_torch_state_dict(state), "metrics": MetricRecord(metrics),
                                   "client": ConfigRecord({"refinements": json.dumps(reports, default=str), "rng": rng})}),
                       reply_to=msg)

    return app


# -- the server ---------------------------------------------------------------------------------------
@dataclass
class Ledger:
    """What the server saw, round by round (filled in the server thread, read after the simulation)."""
    rounds: list = field(default_factory=list)
    curve: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"acc": None, "round": 0, "state": None})
    failure: str | None = None
    privacy: dict | None = None
    client_refinements: dict = field(default_factory=dict)
    client_rngs: dict = field(default_factory=dict)  # partition id -> the client's RNG state after its last round
    wall_before: float = 0.0  # seconds of simulation before a resume
    preempted: bool = False


class RoundFailed(RuntimeError):
    pass


class Preempted(RuntimeError):
    """The server stops after a round whose checkpoint it saved because the job is being requeued."""


class CountingGrid:
    """Flower's Grid as the strategy sees it, counting what each training round sends and receives, and
    refusing a round with too few replies. Counting at the transport leaves the strategy Flower's own (its
    DP wrappers accept only FedAvg's aggregation, unmodified)."""

    def __init__(self, grid, settings: FederatedSettings, ledger: Ledger):
        self.grid, self.settings, self.ledger = grid, settings, ledger

    def __getattr__(self, name):
        return getattr(self.grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import MessageType

        messages = list(messages)
        if not messages or messages[0].metadata.message_type != MessageType.TRAIN:
            return self.grid.send_and_receive(messages, timeout=timeout)
        down = [m.content["arrays"] for m in messages]
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        ok = sorted((m for m in replies if not m.has_error()),
                    key=lambda m: int(m.content["metrics"]["partition-id"]))  # a fixed order: sums are reproducible
        errors = [_reason(m.error.reason) for m in replies if m.has_error()]
        entry = {"round": len(self.ledger.rounds) + 1, "clients": len(messages), "replies": len(ok), "failures": len(errors),
                 "bytes_down": sum(record_bytes(a) for a in down),
                 "serialized_bytes_down": sum(a.count_bytes() for a in down),
                 "bytes_up": sum(record_bytes(m.content["arrays"]) for m in ok),
                 "serialized_bytes_up": sum(m.content["arrays"].count_bytes() for m in ok),
                 "clients_detail": [dict(m.content["metrics"]) for m in ok]}
        self.ledger.rounds.append(entry)
        for m in ok:
            pid = int(m.content["metrics"]["partition-id"])
            self.ledger.client_refinements.setdefault(pid, json.loads(m.content["client"]["refinements"]))
            self.ledger.client_rngs[pid] = m.content["client"]["rng"]
        wanted = math.ceil(self.settings.min_replies * len(messages) - 1e-9)
        if len(ok) < wanted:
            lost = len(messages) - len(replies)
            self.ledger.failure = (
                f"federated round {entry['round']}: {len(ok)} of {len(messages)} sampled clients replied with weights, "
                f"{wanted} needed (federated.min_replies={self.settings.min_replies})"
                + (f"; {len(errors)} failed: " + "; ".join(errors) if errors else "")
                + (f"; {lost} gave no reply within {self.settings.timeout_s:g} s" if lost else ""))
            raise RoundFailed(self.ledger.failure)
        return [*ok, *(m for m in replies if m.has_error())]


UNIFORM_WEIGHT = "uniform-weight"  # every client's reply carries 1.0 under it: DP-FedAvg averages clients uniformly


def build_strategy(settings: FederatedSettings):
    """The Flower strategy, wrapped in Flower's central DP (server-side fixed clipping, RDP accounting) when
    federated.dp.noise_multiplier > 0."""
    sampled = max(1, int(settings.clients * settings.fraction))
    args = {"fraction_train": settings.fraction, "fraction_evaluate": 0.0, "min_train_nodes": sampled,
            "min_evaluate_nodes": 0, "min_available_nodes": settings.clients, **settings.strategy_args}
    if settings.dp.enabled:
        args.setdefault("weighted_by_key", UNIFORM_WEIGHT)
    try:
        strategy = strategy_class(settings.strategy)(**args)
    except TypeError as error:
        raise ValueError(f"federated.strategy_args={settings.strategy_args}: {settings.strategy} does not take them "
                         f"({error})") from None
    if not settings.dp.enabled:
        return strategy
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
    from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    # Client-level DP over the population of clients; no amplification by sampling (Flower's only accounted
    # model for fixed clipping): an upper bound on epsilon.
    accountant = RdpAccountant(PrivacyConfig(target_delta=settings.dp.delta, population_size=settings.clients,
                                             neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                             sampling_method=SamplingMethod.NO_AMPLIFICATION))
    try:
        return DifferentialPrivacyServerSideFixedClipping(strategy, settings.dp.noise_multiplier, settings.dp.clipping_norm,
                                                          sampled, accountant=accountant)
    except ValueError as error:
        raise ValueError(f"federated.dp with federated.strategy={settings.strategy}: {error}") from None


# -- checkpoints at round boundaries ------------------------------------------------------------------
@dataclass
class RoundCheckpoint:
    """The run's checkpoint file (RunCheckpoint, the engine's) written after a federated round: when
    `train.checkpoint_every` says so (at each round, the evaluation, under SLURM by default; or when a multiple of
    N local steps is crossed), and always when the preemption signal has arrived."""
    file: RunCheckpoint | None
    settings: FederatedSettings
    preemption: PreemptionGuard | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def preempted(self) -> bool:
        return self.preemption is not None and self.preemption.requested

    def due(self, round_: int) -> bool:
        """The engine's rule over the round's local steps (the round's last step is its evaluation)."""
        if self.file is None or round_ >= self.settings.rounds:
            return False  # after the last round the record follows at once
        last = round_ * self.settings.local_steps
        return self.preempted or any(self.file.due(step, step == last)
                                     for step in range(last - self.settings.local_steps + 1, last + 1))

    def wall(self, ledger: Ledger) -> float:
        """Seconds of simulation so far, those before a resume included."""
        return ledger.wall_before + time.perf_counter() - self.started

    def save(self, round_: int, arrays: dict, strategy, ledger: Ledger, eval_seconds: float) -> None:
        self.file.save({"federated_round": round_, "rounds": self.settings.rounds, "step": round_ * self.settings.local_steps,
                        "arrays": arrays, "rng": rng_state(), "seconds": {"wall": self.wall(ledger), "eval": eval_seconds},
                        # our own objects, from our own file: Flower's strategy (FedAdam's moments, the DP
                        # accountant) and the ledger (rounds so far, the best round's weights, clients' RNG states)
                        "strategy": dump_strategy(strategy), "ledger": pickle.dumps(ledger)})

    def load(self) -> dict | None:
        state = self.file.load() if self.file is not None else None
        if not state:
            return None
        if "federated_round" not in state or state.get("rounds") != self.settings.rounds:
            raise ValueError(f"checkpoint {self.file.path} is not one of a federated run of {self.settings.rounds} rounds "
                             f"(it has {state.get('rounds', 'no rounds')}); delete it to start over")
        state["strategy"], state["ledger"] = pickle.loads(state["strategy"]), pickle.loads(state["ledger"])
        return state


def dump_strategy(strategy) -> bytes:
    """The strategy object, pickled for a checkpoint. Flower's RDP accountant (the DP wrapper's) holds modules,
    which do not pickle: it goes as its own `state_dict` and is rebuilt from it."""
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    class StrategyPickler(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, RdpAccountant):
                return _rebuilt_accountant, (obj.config, obj.state_dict())
            return NotImplemented

    buffer = io.BytesIO()
    StrategyPickler(buffer).dump(strategy)
    return buffer.getvalue()


def _rebuilt_accountant(config, state: dict):
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    accountant = RdpAccountant(config, orders=tuple(state["orders"]))
    accountant.load_state_dict(state)
    return accountant


def rounds_after(strategy, done: int):
    """`strategy` continued after `done` rounds: Flower's `Strategy.start` numbers its rounds from 1, but a strategy
    may use the number (FedAdam's bias correction, the DP wrapper's accounting) and it is what the clients get
    as `server-round` (their data order, their learning-rate schedule), so each call gets the run's own round."""
    from flwr.serverapp.strategy import Strategy

    class RoundsAfter(Strategy):
        def configure_train(self, server_round, arrays, config, grid):
            return strategy.configure_train(server_round + done, arrays, config, grid)

        def aggregate_train(self, server_round, replies):
            return strategy.aggregate_train(server_round + done, replies)

        def configure_evaluate(self, server_round, arrays, config, grid):
            return strategy.configure_evaluate(server_round + done, arrays, config, grid)

        def aggregate_evaluate(self, server_round, replies):
            return strategy.aggregate_evaluate(server_round + done, replies)

        def summary(self):
            strategy.summary()

    return RoundsAfter() if done else strategy


def server_app(settings: FederatedSettings, ledger: Ledger, initial: dict, evaluate: Callable[[int, dict], dict],
               checkpoints: RoundCheckpoint, resumed: dict | None = None, eval_seconds: Callable[[], float] = lambda: 0.0):
    """The ServerApp: Flower's strategy over `settings.rounds` rounds (the rest of them after `resumed`, a
    RoundCheckpoint state), the server's evaluation after each round, a checkpoint when one is due."""
    from flwr.app import ArrayRecord, Context, MetricRecord
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()
    done = resumed["federated_round"] if resumed else 0

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = resumed["strategy"] if resumed else build_strategy(settings)

        def evaluate_fn(server_round: int, arrays: ArrayRecord):
            if server_round == 0:
                return None  # the initial model (pretrained, or the checkpoint's, already scored): no round to score
            round_, state = done + server_round, arrays.to_torch_state_dict()
            scores = MetricRecord(evaluate(round_, state))
            if checkpoints.due(round_):
                checkpoints.save(round_, state, strategy, ledger, eval_seconds())
                if checkpoints.preempted:
                    raise Preempted(f"preempted after round {round_}")
            return scores

        start = resumed["arrays"] if resumed else initial
        try:
            rounds_after(strategy, done).start(
                grid=CountingGrid(grid, settings, ledger), initial_arrays=ArrayRecord.from_torch_state_dict(start),
                num_rounds=settings.rounds - done, timeout=settings.timeout_s, evaluate_fn=evaluate_fn)
        except Preempted:
            ledger.preempted = True
            return
        except Exception as error:  # noqa: BLE001 - the driver raises it after the simulation ends
            ledger.failure = ledger.failure or f"federated server: {type(error).__name__}: {error}"
            return
        spent = strategy.privacy_spent() if hasattr(strategy, "privacy_spent") else None
        if spent is not None:
            ledger.privacy = {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases,
                              "accounting": f"{spent.accounting_method}, client level, no amplification by sampling",
                              "noise_multiplier": settings.dp.noise_multiplier, "clipping_norm": settings.dp.clipping_norm}

    return app


def _resources(settings: FederatedSettings, device: str) -> tuple[int, int, float]:
    """(CPUs, GPUs) Ray may use, and the GPUs each client actor takes. CPUs are this process's own (a SLURM
    job's allocation, not the node's), at most what the clients can use at once; clients of a CUDA run need a GPU share (Ray hides GPUs from actors
    that ask for none)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpus = min(cpus, math.ceil(settings.clients * settings.client_cpus))  # Ray starts an actor per client slot: no idle ones
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    client_gpus = (1.0 if gpus else 0.0) if settings.client_gpus == "auto" else settings.client_gpus
    if device == "cuda" and not client_gpus:
        raise ValueError("federated.client_gpus=0 with the run on CUDA: the clients would see no GPU; use auto or a "
                         "share such as 0.5 (two clients per GPU)")
    if client_gpus and client_gpus > gpus:
        raise ValueError(f"federated.client_gpus={client_gpus:g}: this process sees {gpus} GPU(s)")
    return max(1, cpus), gpus, float(client_gpus)


def _ray_dir() -> Path:
    """A short private folder for Ray's session files (its socket paths must stay under ~107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="tb-ray-"))


class _RepeatedClientTraceback(logging.Filter):
    """Flower logs a failed client twice: the exception (whose text holds the client's own traceback, from Ray)
    and then the server's traceback, which embeds the same text again inside Flower's and Ray's frames."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("Traceback (most recent call last)") and "ClientAppException" in message)


@contextmanager
def flower_logging():
    """Each Flower message printed once. Flower's logger has its own console handler and also propagates to the
    root logger, which the run (Hydra) has configured: where the root prints, Flower's handler is set aside for
    the simulation, so a message is printed once, in the run's format and its log file. Flower's INFO lines are
    dropped: the rounds are logged here and its summary repeats them."""
    flower = logging.getLogger("flwr")
    level, handlers = flower.level, list(flower.handlers)
    own = [h for h in handlers if type(h) is not logging.FileHandler] if logging.getLogger().handlers else []
    repeated = _RepeatedClientTraceback()
    flower.setLevel(logging.WARNING)
    flower.addFilter(repeated)
    for handler in own:
        flower.removeHandler(handler)
    try:
        yield
    finally:
        flower.removeFilter(repeated)
        for handler in own:
            flower.addHandler(handler)
        flower.setLevel(level)


def simulate(plan: ClientPlan, server, ledger: Ledger, device: str) -> None:
    """Run the Flower simulation of `plan`'s clients against `server` (a `server_app`), which fills `ledger`;
    `device`: the server's model's (a CUDA run gives its clients GPUs)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.simulation import run_simulation

    settings = plan.settings
    cpus, gpus, client_gpus = _resources(settings, device)
    backend = {"client_resources": {"num_cpus": min(settings.client_cpus, cpus), "num_gpus": client_gpus},
               "init_args": {"num_cpus": cpus, "num_gpus": gpus, "include_dashboard": False,
                             "object_store_memory": 100 * 2**20, "log_to_driver": False}}
    ray_dir = _ray_dir()
    backend["init_args"]["_temp_dir"] = str(ray_dir)
    try:
        with flower_logging():
            run_simulation(server_app=server, client_app=client_app(plan), num_supernodes=settings.clients,
                           backend_config=backend)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    if ledger.failure is None and not ledger.preempted and len(ledger.curve) < settings.rounds:
        ledger.failure = (f"federated: the simulation ended after {len(ledger.curve)} of {settings.rounds} rounds "
                          f"(Flower's log above says why)")


# -- one federated cell -------------------------------------------------------------------------------
def fit_evaluate(federation: Federation, run, settings: FederatedSettings, make_net: Callable[[], torch.nn.Module],
                 refinement: ClientRefinement | None = None):
    """Train `run`'s model federatedly; the family's metrics, the round curve and the costs (into run.meter).
    `refinement`: the chain each client applies to its own share."""
    from tunebench.core.run_context import Result

    net, meter = run.model.net, run.meter
    labels = federation.train_split.y
    parts = partition(labels, settings, run.seed)
    start_rng = pickle.dumps(rng_state())  # the clients' RNG before their first round: the run's, as it starts
    checkpoints = RoundCheckpoint(run.checkpoint, settings, PreemptionGuard())
    resumed = checkpoints.load()
    ledger = resumed["ledger"] if resumed else Ledger()
    done = resumed["federated_round"] if resumed else 0
    if resumed:
        set_rng_state(resumed["rng"])  # the server's (client sampling, DP noise)
        meter.times["eval"] += resumed["seconds"]["eval"]
        ledger.wall_before = resumed["seconds"]["wall"]
        log.info("resuming from round %d/%d (%s)", done, settings.rounds, run.checkpoint.path)
    plan = ClientPlan(federation, parts, settings, run.train, run.lr, run.seed, start_rng, make_net,
                      refinement, fail_client=_fail_client(), client_rngs=dict(ledger.client_rngs))

    def evaluate(server_round: int, state: dict) -> dict:
        with torch.no_grad():
            net.load_state_dict(state, strict=False)
        with meter.phase("eval"), run.autocast():
            scores = federation.validate(net)
        acc = scores.get("val_acc")
        if acc is not None and (ledger.best["acc"] is None or acc > ledger.best["acc"]):
            ledger.best.update(acc=acc, round=server_round, state={k: v.detach().clone() for k, v in state.items()})
        ledger.curve.append({"step": server_round * settings.local_steps, "round": server_round, **scores})
        log.info("round %d/%d  %s", server_round, settings.rounds,
                 "  ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float)))
        return {k: float(v) for k, v in scores.items() if isinstance(v, (int, float))}

    checkpoints.started = time.perf_counter()
    server = server_app(settings, ledger, exchanged_state(net), evaluate, checkpoints, resumed, lambda: meter.times["eval"])
    with checkpoints.preemption as preemption:
        simulate(plan, server, ledger, next(net.parameters()).device.type)
        if ledger.preempted:
            preemption.hand_over()  # the launcher (submitit) requeues the job and ends this process
    wall = checkpoints.wall(ledger)
    if ledger.failure:
        raise RuntimeError(ledger.failure)
    if run.train.select_best and ledger.best["state"] is not None:
        with torch.no_grad():
            net.load_state_dict(ledger.best["state"], strict=False)
    _charge(meter, ledger, wall)
    with meter.phase("eval"), run.autocast():
        metrics = federation.finish(net, ledger.best["acc"])
    metrics.update(best_round=ledger.best["round"], best_step=ledger.best["round"] * settings.local_steps,
                   rounds=settings.rounds, steps=settings.rounds * settings.local_steps)
    federated = {**settings.describe(), "clients_data": label_counts(labels, parts), "rounds_detail": ledger.rounds}
    if refinement is not None:
        federated["client_refinements"] = [ledger.client_refinements.get(k, []) for k in range(settings.clients)]
    if ledger.privacy:
        federated["privacy"] = ledger.privacy
        metrics.update(dp_epsilon=ledger.privacy["epsilon"], dp_delta=ledger.privacy["delta"])
    return Result(metrics, ledger.curve, done * settings.local_steps, {"federated": federated})


def _charge(meter: CostMeter, ledger: Ledger, wall: float) -> None:
    """The clients' costs and the traffic into the run's meter. Per-device numbers are the largest client's
    (the server's own peak is kept beside them: it holds a copy of the exchanged state per sampled client);
    train time is each round's slowest client, summed (clients of a round train in parallel on their own
    devices); device_seconds sums every client's training."""
    detail = [c for r in ledger.rounds for c in r.get("clients_detail", [])]
    meter.cpu_measured = False  # the clients trained in Ray's processes: this process's CPU time is not theirs
    meter.times["train"] = sum(max((c["train_seconds"] for c in r.get("clients_detail", [])), default=0.0)
                               for r in ledger.rounds)
    meter.train_samples = sum(c["train_samples"] for c in detail)
    meter.add_device_peak(max((c["peak_memory_bytes"] for c in detail), default=0))
    down = sum(r["bytes_down"] for r in ledger.rounds)
    up = sum(r.get("bytes_up", 0) for r in ledger.rounds)
    first = ledger.rounds[0]
    meter.values.update(
        device_seconds=round(sum(c["train_seconds"] for c in detail), 3),
        federated_wall_seconds=round(wall, 3),
        training_state_bytes=max((c["training_state_bytes"] for c in detail), default=None),
        comm_bytes_down=down, comm_bytes_up=up, comm_bytes_total=down + up,
        comm_bytes_per_client_round=first["bytes_down"] // max(1, first["clients"]),
        comm_serialized_bytes_total=sum(r["serialized_bytes_down"] + r.get("serialized_bytes_up", 0) for r in ledger.rounds),
    )


def _fail_client() -> int | None:
    """TUNEBENCH_FEDERATED_FAIL=<client>: that client raises in every round (the failure path's test)."""
    value = os.environ.get("TUNEBENCH_FEDERATED_FAIL")
    return int(value) if value not in (None, "") else None
