"""Checkpoints inside a run, so that a run killed by a timeout or preemption resumes where it was.

On SLURM, the job gets SIGUSR1 before its time limit (sbatch --signal, set by submitit) and on
`scancel --signal=USR1`; submitit's handler then
requeues the job (hydra's submitit launcher is checkpointable) and exits. `PreemptionGuard` defers
that handler to the next step boundary, where the loop saves a consistent checkpoint first. Periodic
checkpoints (`train.checkpoint_every`) also cover a hard kill. The requeued job runs the same cell
again (same run id), finds the checkpoint and continues from its step.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import torch

log = logging.getLogger("tunebench")
# submitit's preemption signal (its own default is USR2); `tunebench run` sets USR1, SLURM's usual one.
PREEMPT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"


def preempt_signal() -> signal.Signals:
    return signal.Signals["SIG" + os.environ.get(PREEMPT_SIGNAL_ENV, "USR1")]


class RunCheckpoint:
    """One run's training checkpoint file, written atomically (temp file + rename)."""

    def __init__(self, path: Path, every: int = 0):
        self.path = Path(path)
        self.every = int(every)  # save every N steps; 0: only when preempted; AT_EVALS: at each evaluation

    def due(self, step: int, evaluated: bool) -> bool:
        if self.every == AT_EVALS:
            return evaluated
        return self.every > 0 and step % self.every == 0

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        log.info("checkpoint at step %d -> %s", state.get("step", -1), self.path)

    @property
    def sharded_dir(self) -> Path:
        """Where the sharded tensors of an FSDP run go (torch.distributed.checkpoint: one file per rank)."""
        return self.path.with_name(self.path.name + ".dcp")

    def save_sharded(self, tensors: dict, rest: dict, rank: int, barrier) -> None:
        """An FSDP checkpoint: every rank writes its shards (torch.distributed.checkpoint) into a temporary folder,
        rank 0 then puts the folder in place and writes `rest` (the plain state) last, atomically: a plain
        file that exists always belongs to a complete sharded folder."""
        import shutil

        import torch.distributed.checkpoint as dcp

        tmp = self.sharded_dir.with_name(f".{self.sharded_dir.name}.tmp")
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        dcp.save(tensors, checkpoint_id=str(tmp))
        barrier()
        if rank == 0:
            self.path.unlink(missing_ok=True)  # the old plain file names the old folder: gone first
            shutil.rmtree(self.sharded_dir, ignore_errors=True)
            os.replace(tmp, self.sharded_dir)
            self.save({**rest, "sharded": True})
        barrier()

    def load_sharded(self, destination: dict) -> None:
        """Fill `destination` (tensors shaped and sharded like this run's) from the sharded folder."""
        import torch.distributed.checkpoint as dcp

        dcp.load(destination, checkpoint_id=str(self.sharded_dir))

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            # Our own file with optimizer state and RNG tensors: plain containers and tensors only.
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a corrupt checkpoint is not trusted: start from zero
            log.warning("ignoring unreadable checkpoint %s: %s", self.path, e)
            return None

    def clear(self) -> None:
        """Remove the checkpoint, temp files of saves a kill interrupted, and the folders left empty."""
        import shutil

        self.path.unlink(missing_ok=True)
        for folder in (self.sharded_dir, self.sharded_dir.with_name(f".{self.sharded_dir.name}.tmp")):
            shutil.rmtree(folder, ignore_errors=True)
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)
        for folder in (self.path.parent, self.path.parent.parent):  # <sweep>/<run_id>/, then <sweep>/
            try:
                folder.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                break  # not empty: another cell's checkpoint


AT_EVALS = -1


def checkpoint_every(cfg) -> int:
    """`train.checkpoint_every`: 'auto' = at each evaluation under SLURM, else only when preempted."""
    value = cfg.train.checkpoint_every
    if value in (None, "auto"):
        return AT_EVALS if os.environ.get("SLURM_JOB_ID") else 0
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        raise ValueError(f"train.checkpoint_every={value!r}: expected 'auto' or a number of steps (0 = never)") from None


class Preempted(Exception):
    """The preemption signal in a run no launcher requeues: it checkpointed at a step boundary and stops; running
    the same cell again resumes from the checkpoint."""


class PreemptionGuard:
    """Defers the preemption signal (SIGUSR1) to a step boundary. Under a launcher that handles it (submitit's
    requeue), the launcher's handler runs there; in a run no launcher requeues (a local `tunebench run`), the run
    checkpoints there and stops with Preempted, instead of dying on the signal's default action with nothing saved.
    Off the main thread it does nothing (signal handlers belong to the main thread)."""

    def __init__(self):
        self._signal = preempt_signal()
        self._previous = None
        self._installed = None  # what this guard replaced, to put back on exit
        self._entered = False
        self._pending: tuple | None = None

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(self._signal)
            if callable(previous):
                self._previous = previous
            self._installed, self._entered = previous, True
            signal.signal(self._signal, self._defer)
        return self

    def _defer(self, signum, frame) -> None:
        then = "requeueing" if self._previous is not None else "stopping (no launcher requeues this run)"
        log.warning("%s received: checkpointing at the next step boundary, then %s", self._signal.name, then)
        self._pending = (signum, frame)

    @property
    def requested(self) -> bool:
        return self._pending is not None

    def hand_over(self, wait_s: float = 60.0) -> None:
        """Run the launcher's handler now: submitit requeues the job and exits the process.

        In a multi-task job every task stops at the same step (the ranks agree on it), but only task 0
        requeues; submitit's handler returns on the others, which then wait for SLURM to stop them with
        the job. A task whose own copy of the signal has not arrived yet waits for it first."""
        if self._previous is None:  # no launcher to requeue: stop here, the checkpoint is on disk
            self._pending = None
            raise Preempted(f"{self._signal.name} received and no launcher requeues this run: it checkpointed and "
                            f"stopped; run the same cell again to resume from the checkpoint")
        deadline = time.monotonic() + wait_s
        while self._pending is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._pending is not None and self._previous is not None:
            pending, self._pending = self._pending, None
            signal.signal(self._signal, self._previous)
            self._previous(*pending)
        log.warning("another task requeues the job; this one waits to be stopped with it")
        time.sleep(10 * wait_s)
        raise SystemExit(0)

    def __exit__(self, *exc) -> None:
        if self._entered:
            signal.signal(self._signal, self._installed if self._installed is not None else signal.SIG_DFL)
            if self._pending is not None:
                # The signal came after the last training step: finishing is quicker than a requeue.
                log.warning("the preemption signal arrived after training ended; finishing the run instead of requeueing")
