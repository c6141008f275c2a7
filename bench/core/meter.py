"""The cost meter: one implementation for every method.

Counts trainable / total parameters, the exact bytes of parameters + gradients + optimizer state,
the measured peak memory of the run, train / eval wall time, samples per second and saved bytes.

Peak memory on CPU is the resident-set peak *over this run's own baseline*, so it is right even when
many runs share one process (Hydra's basic launcher): before the baseline, freed heap pages are
returned to the OS (malloc_trim) and the kernel's peak counter is reset (/proc/self/clear_refs),
so the peak is exact, not sampled. Where that reset is not allowed, a thread samples RSS instead.
glibc's mmap threshold is fixed (mallopt, MMAP_THRESHOLD_BYTES) before the baseline: by default glibc
raises it each time a large block is freed, after which large tensors come from the heap and stay
resident when freed, so the RSS peak measured the allocator's history as much as the run (the quick
LoRA cell, 30 steps, three fresh processes: 779-823 MB by default, 606-642 MB with a fixed 4 MiB
threshold at the same speed). Local multiruns also give each cell its own process (tunebench.app.cell),
so no cell inherits another's heap. On GPU it is CUDA's max allocated bytes since the run's reset.
"""
from __future__ import annotations

import ctypes
import gc
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _release_free_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the baseline is simply less tight


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
# 4 MiB: tensors above it (most weights, optimizer state, the larger activations) are returned to the
# OS when freed; below it (measured on the quick LoRA / full cells) a smaller threshold costs time:
# 128 KiB made training 60% slower, 1 MiB 15%, 4 MiB nothing measurable.
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024


def _fix_mmap_threshold() -> bool:
    """Large blocks always mmap'ed, so freed tensors leave the resident set (see the module doc)."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def _reset_kernel_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class _RssSampler(threading.Thread):
    """Fallback peak tracker: samples RSS every `interval` seconds."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = psutil.Process().memory_info().rss
        self._stop_event = threading.Event()
        self._process = psutil.Process()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, self._process.memory_info().rss)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes this process holds for `t` (its own shard of an FSDP-sharded tensor)."""
    to_local = getattr(t, "to_local", None)
    t = to_local() if callable(to_local) else t
    return t.numel() * t.element_size()


def parameter_counts(model: torch.nn.Module, head_prefixes: tuple[str, ...] = ()) -> dict:
    """Trainable and total parameters; `head_prefixes` names the task head so it can be excluded
    (papers such as LoRA report adapter parameters without the classifier)."""
    total = trainable = trainable_head = 0
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:  # tied weights count once
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            if any(part in name for part in head_prefixes):
                trainable_head += p.numel()
    return {
        "params_total": total,
        "params_trainable": trainable,
        "params_trainable_excl_head": trainable - trainable_head,
        "trainable_pct": 100.0 * trainable / total if total else 0.0,
    }


def training_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Exact bytes held by parameters, their gradients (trainable only) and optimizer state."""
    params = {id(p): p for p in model.parameters()}.values()
    param_bytes = sum(tensor_bytes(p) for p in params)
    grad_bytes = sum(tensor_bytes(p) for p in params if p.requires_grad)
    optim_bytes = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            optim_bytes += sum(tensor_bytes(v) for v in state.values() if torch.is_tensor(v))
    return {
        "param_bytes": param_bytes,
        "grad_bytes": grad_bytes,
        "optimizer_state_bytes": optim_bytes,
        "training_state_bytes": param_bytes + grad_bytes + optim_bytes,
    }


class CostMeter:
    def __init__(self, device: str = "cpu"):
        self.device = device
        self.times = {"train": 0.0, "eval": 0.0}
        # CPU seconds of this process (every thread) in the same phases: unlike wall seconds, not stretched by other
        # processes sharing the cores (parallel cells); False where part of the work ran in other processes
        self.cpu_times = {"train": 0.0, "eval": 0.0}
        self.cpu_measured = True
        self.train_samples = 0
        self.values: dict = {}
        self._baseline = 0
        self._peak_bytes: int | None = None
        self._sampler: _RssSampler | None = None
        self._kernel_peak = False
        self._device_peaks: list[int] = []

    # -- memory ------------------------------------------------------------------------------
    def start(self) -> "CostMeter":
        fixed = _fix_mmap_threshold()
        _release_free_heap()
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
            self.values["peak_memory_source"] = "cuda_max_allocated"
            return self
        self.values["malloc_mmap_threshold"] = MMAP_THRESHOLD_BYTES if fixed else None
        self._baseline = psutil.Process().memory_info().rss
        self._kernel_peak = _reset_kernel_peak()
        if self._kernel_peak:
            self.values["peak_memory_source"] = "rss_kernel_peak_minus_baseline"
        else:
            self._sampler = _RssSampler()
            self._sampler.start()
            self.values["peak_memory_source"] = "rss_sampled_minus_baseline"
        return self

    def stop(self) -> None:
        if self.device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._kernel_peak:
            peak = (_status_kib("VmHWM") or 0) * 1024
        else:
            peak = self._sampler.stop() if self._sampler else self._baseline
        self._peak_bytes = max(0, peak - self._baseline)

    def add_device_peak(self, peak_bytes: int) -> None:
        """The peak of another process that trained for this run (a federated client). The run's peak is then
        the largest training device's, comparable with a one-process run; this process only coordinated
        (a federated server) and its own peak is kept as `peak_memory_server_bytes`."""
        self._device_peaks.append(int(peak_bytes))

    # -- time and throughput -------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str):
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start
            self.cpu_times[name] = self.cpu_times.get(name, 0.0) + time.process_time() - cpu_start

    def add_train_samples(self, n: int) -> None:
        self.train_samples += n

    # -- static costs ----------------------------------------------------------------------------
    def count_params(self, model: torch.nn.Module, head_prefixes: tuple[str, ...] = ()) -> None:
        self.values.update(parameter_counts(model, head_prefixes))

    def count_training_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        self.values.update(training_state_bytes(model, optimizer))

    def count_training_state_once(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        """After the first optimiser update (its state exists then); later calls change nothing."""
        if "training_state_bytes" not in self.values:
            self.count_training_state(model, optimizer)

    def count_saved(self, path: Path) -> None:
        path = Path(path)
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        self.values["saved_bytes"] = sum(p.stat().st_size for p in files)

    def count_saved_state(self, state: dict) -> None:
        """Bytes of `state` (tensors) written as safetensors: what a method would store; nothing if empty."""
        import shutil
        import tempfile

        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        if not state:
            return
        folder = tempfile.mkdtemp(prefix="tunebench-save-")
        try:
            save_file(state, str(Path(folder) / "model.safetensors"))
            self.count_saved(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def summary(self) -> dict:
        out = dict(self.values)
        out["train_seconds"] = round(self.times["train"], 3)
        out["eval_seconds"] = round(self.times["eval"], 3)
        if self.cpu_measured:
            out["train_cpu_seconds"] = round(self.cpu_times["train"], 3)
            out["eval_cpu_seconds"] = round(self.cpu_times["eval"], 3)
        out["train_samples"] = self.train_samples
        out["samples_per_second"] = (
            round(self.train_samples / self.times["train"], 3) if self.times["train"] > 0 else None
        )
        if self._peak_bytes is not None:
            out["peak_memory_bytes"] = self._peak_bytes
            if self._device_peaks:
                out["peak_memory_server_bytes"] = self._peak_bytes
                out["peak_memory_server_mb"] = round(self._peak_bytes / 2**20, 2)
                out["peak_memory_bytes"] = max(self._device_peaks)
            out["peak_memory_mb"] = round(out["peak_memory_bytes"] / 2**20, 2)
        return out


def combine_ranks(summaries: list[dict]) -> dict:
    """One cost block for a run of several processes (one device each), from every rank's `summary()`.

    Per-device numbers stay comparable with one-process runs: peak memory and training-state bytes are the
    largest rank's (with the sum beside them), times are the slowest rank's; `device_seconds` is the
    training time summed over devices. Train samples are the global count (every rank records it)."""
    if len(summaries) == 1:
        return summaries[0]
    out = dict(summaries[0])
    out["ranks"] = out["devices"] = len(summaries)
    for key in ("train_seconds", "eval_seconds", "train_cpu_seconds", "eval_cpu_seconds"):
        if all(s.get(key) is not None for s in summaries):
            out[key] = max(s[key] for s in summaries)
        else:
            out.pop(key, None)
    out["device_seconds"] = round(sum(s.get("train_seconds") or 0.0 for s in summaries), 3)
    out["samples_per_second"] = round(out["train_samples"] / out["train_seconds"], 3) if out["train_seconds"] else None
    for key in ("peak_memory_bytes", "training_state_bytes"):
        values = [s[key] for s in summaries if s.get(key) is not None]
        if values:
            out[key], out[f"{key}_sum"] = max(values), sum(values)
            out[f"{key}_per_rank"] = values
    if "peak_memory_bytes" in out:
        out["peak_memory_mb"] = round(out["peak_memory_bytes"] / 2**20, 2)
    return out
