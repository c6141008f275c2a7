"""Multi-process training: one run over several processes with torch.distributed (DDP, FSDP).

Who starts the processes:
  - `torchrun` (or `train.processes=N` on a local machine, which starts the cell through torchrun), or
  - SLURM tasks (`launcher=slurm_ddp`: one task per device; rank and world size from SLURM through
    submitit's `TorchDistributedEnvironment`).
Every process runs the same cell (same config, same run id). One process group per process (a cell, or
the cells of a multirun started under torchrun): NCCL on GPUs, gloo on CPU, with a timeout on every
collective (`train.dist_timeout_s`), so a rank that dies cannot leave the others waiting forever.

The split of the work (what a rank does), kept here so the engine and the families only ask:
  - training: `train.batch_size` stays the *global* batch, drawn from the run seed exactly as in one
    process; rank r takes the items r, r + W, r + 2W, ... of it (`DistributedSampler`'s rule, without its
    padding, which would count some examples twice); each micro-batch's mean loss is weighted by its share
    of the global batch's loss units (examples; answer tokens for a causal LM), times W, so that DDP's
    mean over ranks is the global batch's mean loss: W processes make the same update as one;
  - evaluation: each rank predicts a strided share of the examples and the predictions are gathered,
    so every rank holds the same scores (best-validation selection stays in step);
  - writing: only rank 0 writes the record, the checkpoint and the logger; a rank that fails writes the
    cell's `failed` record itself (the first failure is the one recorded).
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger("tunebench")

MODES = ("auto", "none", "ddp", "fsdp")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank, world size, local rank, and the parallel mode in use."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    mode: str = "none"          # none | ddp | fsdp (auto resolved)
    backend: str | None = None  # gloo | nccl when a process group is up
    launcher: str | None = None  # torchrun | slurm
    device: str | None = None    # this rank's device (cpu, cuda:<local rank>)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def describe(self) -> dict:
        """What the record says about the processes (`engine.distributed`)."""
        return {"mode": self.mode, "ranks": self.world, "backend": self.backend, "launcher": self.launcher}


SINGLE = Ranks()
_current = SINGLE


def current() -> Ranks:
    """The ranks of the cell this process is running (SINGLE outside a multi-process cell)."""
    return _current


# -- who started us ---------------------------------------------------------------------------------------
def launch_rank() -> int:
    """This process's rank as its launcher set it (0 when it was started alone); no side effects."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"])
    if _slurm_step_tasks() > 1:
        return int(os.environ.get("SLURM_PROCID", 0))
    return 0


def _slurm_step_tasks() -> int:
    """Tasks of the SLURM job step this process belongs to. Set by srun (submitit starts its tasks with it),
    not in a batch script: there SLURM_NTASKS may be 2 while the script itself is one process."""
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1)


def launcher_name() -> str | None:
    """torchrun | slurm when a launcher started this process as one of several, else None (no side effects)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return "torchrun" if int(os.environ["WORLD_SIZE"]) > 1 else None
    return "slurm" if is_launched() else None


def is_launched() -> bool:
    """True when a launcher started this process as one of several (torchrun, a multi-task SLURM job)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"]) > 1
    return _slurm_step_tasks() > 1 and "SLURM_PROCID" in os.environ


def launched_ranks() -> tuple[int, int, int, str] | None:
    """(rank, world, local rank, launcher) when this process is one of several, else None.

    torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / PORT); a SLURM job step of several
    tasks (srun) sets SLURM_STEP_NUM_TASKS / SLURM_PROCID, from which submitit exports the same variables."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        world = int(os.environ["WORLD_SIZE"])
        if world > 1:
            return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0)), "torchrun"
        return None
    if is_launched():
        from submitit.helpers import TorchDistributedEnvironment

        env = TorchDistributedEnvironment().export(set_cuda_visible_devices=torch.cuda.is_available(), overwrite=True)
        return env.rank, env.world_size, env.local_rank, "slurm"
    return None


def resolve_mode(wanted: str, world: int) -> str:
    """`train.distributed` for a run of `world` processes: auto -> ddp when several, none when one."""
    if wanted not in MODES:
        raise ValueError(f"train.distributed={wanted!r}: expected one of {', '.join(MODES)}")
    if world == 1:
        return "none"
    if wanted == "none":
        raise ValueError(f"train.distributed=none, but this cell was started as {world} processes (torchrun / SLURM "
                         f"tasks / train.processes): use train.distributed=auto, ddp or fsdp, or start one process")
    return "ddp" if wanted == "auto" else wanted


def device_for(local_rank: int, wanted: str) -> str:
    """A rank's device from `train.device`: its own GPU (cuda:<local rank>, or cuda:0 when SLURM left it one
    visible GPU) or the CPU."""
    if wanted == "cpu" or (wanted == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise ValueError(f"train.device={wanted}: no CUDA device is visible to this process")
    index = local_rank if torch.cuda.device_count() > local_rank else 0
    return f"cuda:{index}"


@contextlib.contextmanager
def cell_ranks(wanted_mode: str, wanted_device: str, timeout_s: float):
    """The cell's process group (when several processes run it): set up on entry, torn down on exit.

    Yields the Ranks; outside a multi-process launch it yields SINGLE and starts nothing."""
    global _current
    launched = launched_ranks()
    if launched is None:
        resolve_mode(wanted_mode, 1)
        yield SINGLE
        return
    rank, world, local_rank, launcher = launched
    mode = resolve_mode(wanted_mode, world)
    device = device_for(local_rank, wanted_device)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # once per process: a multirun under torchrun runs its cells in one group
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=float(timeout_s)))
        atexit.register(_destroy_group)
    _current = Ranks(rank, world, local_rank, mode, backend, launcher, device)
    log.info("rank %d of %d (%s, %s via %s)", rank, world, mode, backend, launcher)
    try:
        yield _current
    finally:
        _current = SINGLE


def _destroy_group() -> None:
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


# -- training: the global batch, shared out --------------------------------------------------------------
def shard(items, ranks: Ranks | None = None) -> tuple:
    """Rank r's share of a global batch, items r, r + W, ... (DistributedSampler's rule, without its padding),
    and whether the share counts. A rank with no item (a last batch smaller than the world) gets one item
    that does not count (the engine weights its loss 0): it still takes part in the gradient all-reduce,
    which every rank must."""
    ranks = ranks or current()
    if not ranks.active:
        return items, True
    mine = items[ranks.rank::ranks.world]
    if len(mine) == 0:
        return items[:1], False
    return mine, True


def global_mean(loss_sum: float, samples: int) -> tuple[float, int]:
    """(sum of per-sample losses, samples) over all ranks -> (mean loss, total samples)."""
    ranks = current()
    if not ranks.active:
        return (loss_sum / samples if samples else float("nan")), samples
    totals = torch.tensor([loss_sum, float(samples)], dtype=torch.float64)
    dist.all_reduce(totals)
    total_loss, total_samples = float(totals[0]), int(round(float(totals[1])))
    return (total_loss / total_samples if total_samples else float("nan")), total_samples


# -- evaluation: a share of the examples each, gathered ---------------------------------------------------
def eval_share(order: np.ndarray) -> np.ndarray:
    """The evaluation indices this rank predicts: a strided share of `order` (which keeps the longest-first
    batches of similar lengths on every rank), every share equally long (a short one repeats its last
    index) so that all ranks run the same number of batches: under FSDP each forward is a collective."""
    ranks = current()
    if not ranks.active:
        return order
    share = order[ranks.rank::ranks.world]
    length = -(-len(order) // ranks.world)
    if len(share) < length:
        filler = share[-1:] if len(share) else order[:1]
        share = np.concatenate([share, np.repeat(filler, length - len(share))])
    return share


def gather_values(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """`values` is filled at `indices` on each rank; returns the array filled at every rank's indices."""
    ranks = current()
    if not ranks.active:
        return values
    shares = [None] * ranks.world
    dist.all_gather_object(shares, (np.asarray(indices), np.asarray(values)[indices]))
    out = np.array(values, copy=True)
    for idx, part in shares:
        out[idx] = part
    return out


def gather_objects(value) -> list:
    """Every rank's `value`, in rank order (one item when single-process)."""
    ranks = current()
    if not ranks.active:
        return [value]
    out = [None] * ranks.world
    dist.all_gather_object(out, value)
    return out


def broadcast_flag(flag: bool) -> bool:
    """True when any rank's flag is true (a preemption signal that reached one task first)."""
    ranks = current()
    if not ranks.active:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if current().active:
        dist.barrier()


# -- FSDP: the network sharded across ranks ---------------------------------------------------------------
def block_classes(net: torch.nn.Module) -> set[str]:
    """The model's transformer-block classes (transformers' `_no_split_modules`): the FSDP units."""
    names: set[str] = set()
    for module in net.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return names


def shard_model(net: torch.nn.Module) -> torch.nn.Module:
    """FSDP (torch's fully_shard): each transformer block, then the rest, sharded across the ranks, in place.

    Done before the family builds its optimiser (which must see the sharded parameters). Other modes:
    the network as it is (DDP wraps it in the engine)."""
    ranks = current()
    if ranks.mode != "fsdp":
        return net
    from torch.distributed.fsdp import fully_shard

    blocks = block_classes(net)
    if not blocks:
        raise ValueError(f"train.distributed=fsdp: {type(net).__name__} names no transformer blocks to shard "
                         f"(transformers' _no_split_modules); use train.distributed=ddp for this model")
    units = [m for m in net.modules() if type(m).__name__ in blocks]
    for unit in units:
        fully_shard(unit)
    fully_shard(net)
    log.info("FSDP: %d blocks (%s) sharded over %d ranks", len(units), ", ".join(sorted(blocks)), ranks.world)
    return net


@contextlib.contextmanager
def unsharded_root(net: torch.nn.Module):
    """The FSDP root's own weights (embeddings, output head) gathered for the block: a call that is not the
    root's forward (`generate`) does not run the hook that would gather them. The blocks' own forward
    hooks still gather and free theirs. Anything else: nothing to do."""
    unshard = getattr(net, "unshard", None)
    if current().mode != "fsdp" or not callable(unshard):
        yield
        return
    unshard()
    try:
        yield
    finally:
        net.reshard()


def is_sharded(net: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in net.parameters())


def trainable_shards(net: torch.nn.Module) -> dict:
    """The trainable weights of an FSDP network as sharded tensors (a best-validation snapshot). Through the
    state-dict API, not `named_parameters`: after an evaluation the root unit's weights may still be gathered."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in get_model_state_dict(net).items() if k in trainable}


def load_trainable_shards(net: torch.nn.Module, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(net, state, options=StateDictOptions(strict=False))


def full_state_dict(net: torch.nn.Module) -> dict | None:
    """The whole (unsharded) state on rank 0's CPU, gathered from an FSDP network (every rank must call);
    None for a network that is not sharded."""
    if not is_sharded(net):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# -- the network a rank trains ----------------------------------------------------------------------------
class ParallelNet:
    """The job's network as the ranks train it. DDP: the forward / backward of a training step runs through
    the DistributedDataParallel wrapper (its gradient all-reduce); everything else (evaluation, snapshots,
    checkpoints, a family's own hooks) sees the plain module, identical on every rank."""

    def __init__(self, net: torch.nn.Module, ranks: Ranks):
        self.module, self.ranks, self.wrapped = net, ranks, None
        if ranks.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            param = next(net.parameters())
            device_ids = [param.device.index] if param.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(net, device_ids=device_ids)

    @contextlib.contextmanager
    def training(self, job, sync: bool = True):
        """Within: `job.net` is the DDP wrapper; gradients are all-reduced only when `sync` (the last
        micro-batch of an accumulated step: `no_sync` skips the all-reduce for the others)."""
        if self.wrapped is None:
            yield
            return
        job.net = self.wrapped
        try:
            with contextlib.nullcontext() if sync else self.wrapped.no_sync():
                yield
        finally:
            job.net = self.module


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (it fills the shared caches: data, refinements, model conversions), the
    other ranks then run it on warm caches. The wait has no collective timeout to beat: it is a barrier on
    a group made for it with a long one (a rank 0 that fails closes its connections, which ends the wait)."""
    ranks = current()
    if not ranks.active:
        yield
        return
    group = _slow_group()
    if not ranks.is_main:
        dist.barrier(group=group)
    yield
    if ranks.is_main:
        dist.barrier(group=group)


SLOW_TIMEOUT = datetime.timedelta(hours=24)
_slow = {}


def _slow_group():
    """A gloo group over every rank with a long timeout (for waits that are work, not hangs)."""
    key = id(dist.group.WORLD)
    if key not in _slow:
        _slow[key] = dist.new_group(backend="gloo", timeout=SLOW_TIMEOUT)
    return _slow[key]


PEER_LOST = ("connection reset by peer", "connection closed by peer", "timed out", "broken pipe")


def lost_peer(error: BaseException) -> bool:
    """True for an error that says another rank went away (its connection dropped, a collective timed out):
    the cause is that rank's, not this one's."""
    if isinstance(error, getattr(dist, "DistNetworkError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(sign in text for sign in PEER_LOST)


# -- rehearsing a failure ---------------------------------------------------------------------------------
FAULT_ENV = "TUNEBENCH_FAULT"


def rehearse_fault(step: int) -> None:
    """`TUNEBENCH_FAULT=rank=1,step=3[,kind=raise|hang|kill]`: at that step that rank raises, stops answering,
    or dies at once (as a process killed by the system: no record, the checkpoint stays).

    For rehearsing what a cluster job does when one process dies or hangs (the cell must end as one
    `failed` record, the other ranks must not wait forever); unset, it costs one dictionary lookup."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    try:
        fields = dict(part.split("=", 1) for part in spec.split(","))
        rank, at, kind = int(fields.get("rank", 0)), int(fields.get("step", 1)), fields.get("kind", "raise")
    except ValueError:
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected rank=<r>,step=<s>[,kind=raise|hang|kill]") from None
    if rank != current().rank or at != step:
        return
    if kind == "kill":
        log.warning("%s: rank %d dies at step %d", FAULT_ENV, rank, step)
        logging.shutdown()
        os._exit(137)
    if kind == "hang":
        log.warning("%s: rank %d stops answering at step %d", FAULT_ENV, rank, step)
        time.sleep(float(fields.get("seconds", 3600)))
    raise RuntimeError(f"rehearsed fault ({FAULT_ENV}={spec}): rank {rank} stopped at step {step}")
