"""One run: load task -> refine -> build model -> adapt -> fit/evaluate -> one atomic JSON record.

A failing cell writes a `failed` record (with its traceback) and the sweep goes on; a non-finite
loss ends the run as `diverged`; an existing `ok` record makes the run skip unless force=true.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tunebench.core import distributed as dp
from tunebench.core import record as rec
from tunebench.core.cache import BUILT_HERE, builds_since
from tunebench.core.checkpoint import Preempted, RunCheckpoint, checkpoint_every
from tunebench.core.config_check import ConfigError, check_run_config
from tunebench.core.engine import TrainSettings, lr_for
from tunebench.core.loggers import LOGGERS
from tunebench.core.meter import CostMeter, combine_ranks
from tunebench.core.models import ModelFactory, prepare_packaged
from tunebench.core.names import UnsafeName, check_component
from tunebench.core.federated import FederatedSettings
from tunebench.core.run_context import Result, RunContext
from tunebench.core.seeding import seed_everything

log = logging.getLogger("tunebench")


def semantic_config(cfg: DictConfig) -> dict:
    """The resolved config without Hydra's own node (which only exists before the job starts)."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in cfg if k != "hydra"}


def _device(cfg) -> str:
    if dp.current().device:  # one of several processes: its own device
        return dp.current().device
    wanted = str(cfg.train.device)
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def _quiet_libraries() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # peft calls a transformers property that warns about its own rename on every adapter build.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def cell_of(cfg, task, refine: str, train: TrainSettings) -> dict:
    return {
        "task": task.name, "refine": refine, "method": str(cfg.method.name),
        "lr": lr_for(cfg.method, train, task.modality),
        "seed": int(cfg.seed), "model": str(cfg.model.name),
    }


def _execute(cfg, record: dict, refine_ctx, checkpoint: RunCheckpoint, log_metrics) -> None:
    """The run itself; fills `record` as it goes so a failure keeps what was measured."""
    from tunebench.datasets import load
    from tunebench.datasets.refine import apply_chain, chain_name
    from tunebench.methods import method_for
    from tunebench.core.models import build

    method = method_for(cfg.method)  # unknown names fail before any work
    train = TrainSettings.from_config(cfg.train)
    federated = FederatedSettings.from_config(cfg.get("federated") or {})
    seed_everything(int(cfg.seed))
    with dp.main_first():  # several processes: rank 0 fills the caches (data, refinements, conversions) first
        task = load(cfg.data)
        if not method_accepts(method, task.modality):
            raise ValueError(f"method '{cfg.method.name}' fine-tunes {'/'.join(method.modalities)} tasks; "
                             f"data={cfg.data.name} has modality '{task.modality}'")
        record["cell"] = cell_of(cfg, task, chain_name(cfg.refine), train)  # before refining: a stopped or failed refinement still names its cell
        _check_refinements_are_read(method, cfg)
        at_clients = federated.enabled and federated.refine_at == "clients" and chain_name(cfg.refine) != "none"
        if at_clients:  # each client refines its own share (the server never pools the raw split)
            init, record["refinements"] = None, []
        else:
            task, init, record["refinements"] = apply_chain(task, cfg.refine, refine_ctx)
        record["task"] = task.summary()
        prepare_packaged(cfg.model, refine_ctx.cache_dir)  # a one-off conversion (SmolLM2) is not the run's cost
    device = _device(cfg)
    meter = CostMeter(device).start()
    try:
        model = build(cfg.model, task, init, cache_dir=refine_ctx.cache_dir)
        model.net = method.adapt(model.net, cfg.method)
        if not _on_meta_device(model.net):  # a published config without weights: counted, never moved
            model.net = model.net.to(device)
        meter.count_params(model.net, model.head_prefixes)
        if cfg.count_only:
            return
        model.net = dp.shard_model(model.net)  # FSDP: sharded before the family builds its optimiser
        if _on_meta_device(model.net):
            raise ValueError(f"model={cfg.model.name} is a published configuration without weights: it can count "
                             f"parameters (count_only=true) but not train; use model=hf model.name=<hub name or folder>")
        run = RunContext(method=cfg.method, train=train, seed=int(cfg.seed), task=task, model=model, meter=meter,
                         cache_dir=refine_ctx.cache_dir, checkpoint=checkpoint, log_metrics=log_metrics,
                         load_task=lambda name: load(OmegaConf.merge(cfg.data, {"name": name})))
        result = _fit(method, run, cfg, federated, at_clients, init, refine_ctx, device)
        if at_clients:
            record["refinements"] = [{"name": chain_name(cfg.refine), "at": "clients",
                                      "clients": result.engine["federated"]["client_refinements"]}]
        if cfg.get("save_model"):
            saved = _save_model(method, model.net, Path(cfg.paths.models) / str(cfg.sweep) / record["run_id"])
            record["saved_model"] = saved
        record["metrics"], record["curve"] = result.metrics, result.curve
        record["resumed_from_step"], record["engine"] = result.resumed_from_step, result.engine
    finally:
        meter.stop()
        record["cost"] = meter.summary()
    if dp.current().active:  # every rank got here: one cost block (per-device peaks, device-seconds)
        record["cost"] = combine_ranks(dp.gather_objects(record["cost"]))


def _fit(method, run: RunContext, cfg, federated: FederatedSettings, at_clients: bool, init, refine_ctx, device) -> Result:
    """The method's own training, or its training by Flower clients (federated.strategy, tunebench.core.federated)
    for a method family that has that path; `at_clients`: each client applies the refine chain to its share."""
    if not federated.enabled:
        return method.fit_evaluate(run)
    fit = getattr(method, "fit_federated", None)
    if fit is None:
        raise ValueError(f"federated.strategy={federated.strategy}: method={method.name} has no federated path (the "
                         f"classifier methods on text / image tasks have one); run it with federated.strategy=none")
    if dp.current().active:
        raise ValueError(f"federated.strategy={federated.strategy} with {dp.current().world} processes: a federated cell "
                         f"runs its clients as Flower simulation actors in one launch; use train.processes=1")
    from tunebench.core.federated import ClientRefinement

    refinement = ClientRefinement(cfg.refine, refine_ctx, run.task) if at_clients else None
    return fit(run, federated, _client_net_builder(cfg, method, run.task, init, refine_ctx.cache_dir, device), refinement)


def _client_net_builder(cfg, method, task, init, cache_dir, device):
    """How a federated client builds the run's network in its own process: the same model config, task and
    refinement init, adapted by the same method (its trainable weights then come from the server)."""
    model_cfg, method_cfg = cfg.model, cfg.method

    def make_net():
        from tunebench.core.models import build

        return method.adapt(build(model_cfg, task, init, cache_dir=cache_dir).net, method_cfg).to(device)

    return make_net


def _save_model(method, net, folder: Path) -> str:
    """The trained network in the method's own saved form (save_pretrained: the adapter alone for peft)."""
    save = getattr(method, "save", None)
    if save is None:
        raise ValueError(f"save_model=true: method={method.name} has no saved form (it is scored, not kept); "
                         f"run it with save_model=false")
    state = dp.full_state_dict(net)  # FSDP: gathered from every rank (all take part), saved by rank 0
    if not dp.current().is_main:
        return str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save(net, str(folder), state)
    log.info("saved the trained network -> %s", folder)
    return str(folder)


def method_accepts(method, modality: str) -> bool:
    """The method's modalities; a text method that can also train causal LMs (`generates`) takes generation tasks."""
    return modality in method.modalities or (modality == "generation" and "text" in method.modalities
                                             and getattr(method, "generates", False))


def _on_meta_device(net) -> bool:
    return any(p.is_meta for p in net.parameters())


def _check_refinements_are_read(method, cfg) -> None:
    """A method that never reads the training split (per-task few-shot adaptation) would ignore a
    refinement of it: refuse instead of recording a refinement that changed nothing."""
    from tunebench.datasets.refine import chain_name, split_refinements

    if getattr(method, "reads_training_split", True) or not split_refinements(cfg.refine):
        return
    name = cfg.method.name
    raise ValueError(
        f"method={name} adapts on each meta-test task's support set only and never reads the training "
        f"split, so refine={chain_name(cfg.refine)} would change nothing; use it with a method that trains on the "
        f"training split (maml / fomaml / fs_finetune), or run {name} with refine=none")


def run_cell(cfg: DictConfig, in_child: bool = False) -> str:
    """Run one cell and write its record; returns the status ('ok', 'failed', 'diverged', 'skipped',
    'elsewhere': another process is running this cell).

    In a local multirun the cell runs in a child process (tunebench.app.cell: peak memory that does not
    depend on which cells ran before); `in_child` marks that child, whose parent holds the cell's lock."""
    from tunebench.app import cell

    _quiet_libraries()
    try:  # before anything is read or written under the sweep's folder
        check_component(cfg.sweep, "sweep")
    except UnsafeName as e:
        log.error("run not started: %s", e)
        return "failed"
    config = semantic_config(cfg)
    rid = rec.run_id(config)
    path = rec.record_path(Path(cfg.paths.runs) / str(cfg.sweep), rid)
    if _already_ok(cfg, path, rid):
        return "skipped"
    NOT_RUN_HERE.pop(rid, None)
    try:
        for key in ("runs", "checkpoints", "cache"):
            rec.ensure_writable(Path(cfg.paths[key]) / (str(cfg.sweep) if key == "runs" else ""), f"paths.{key}")
    except rec.NotWritable as e:  # no record can be written: say so before any work
        log.error("run %s not started: %s", rid, e)
        return "failed"
    try:
        check_run_config(cfg)
    except ConfigError as e:  # before any work: one line and a failed record, the rest of a sweep goes on
        if dp.launch_rank() == 0:
            rec.write_atomic(path, rec.failed_record(config, rid, str(cfg.sweep), "ConfigError", str(e)))
        log.error("run %s failed: invalid config: %s", rid, e)
        return "failed"
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if in_child or dp.launch_rank() > 0:  # the parent / rank 0 holds the cell's lock
        return _run_here(cfg, config, rid, path)
    with rec.cell_lock(path.parent, rid) as mine:
        if not mine:
            NOT_RUN_HERE[rid] = "elsewhere"
            log.info("skip %s (%s seed %s): another process is running this cell (lock %s/.cells/%s.lock)",
                     rid, cfg.method.name, cfg.seed, path.parent, rid)
            return "elsewhere"
        if _already_ok(cfg, path, rid):  # finished by another process between the first look and the lock
            return "skipped"
        rec.clear_stale_temps(path.parent, rid)  # a killed write of this record left its temp file
        if cell.wanted(cfg):
            return cell.run_in_child(cfg, config, rid, path)
        return _run_here(cfg, config, rid, path)


# Cells this process decided not to run ('skipped', 'elsewhere'), for the summary: a record another
# process wrote during this sweep must not count as this sweep's 'ok'.
NOT_RUN_HERE: dict[str, str] = {}


def _already_ok(cfg, path: Path, rid: str) -> bool:
    if cfg.force is not True and rec.existing_status(path.parent, rid) == "ok":
        log.info("skip %s (%s seed %s): ok record exists at %s", rid, cfg.method.name, cfg.seed, path)
        NOT_RUN_HERE[rid] = "skipped"
        return True
    return False


def _run_here(cfg, config: dict, rid: str, path: Path) -> str:
    """Run the cell in this process (one of its ranks when several processes run it) and write its record."""
    record = rec.new_record(config, rid, str(cfg.sweep))
    try:
        ranks_of_cell = dp.cell_ranks(str(cfg.train.distributed), str(cfg.train.device), float(cfg.train.dist_timeout_s))
        ranks = ranks_of_cell.__enter__()
    except Exception as e:  # no process group (a rank that never came, a bad train.distributed): a failed record
        record.update(status="failed", error=rec.error_info(e), env=rec.environment("cpu"), resumed_from_step=0,
                      finished_at=rec.now_iso())
        log.error("run %s failed: %s: %s", rid, type(e).__name__, e)
        rec.write_record(path, record)
        return "failed"
    try:
        return _run_as(ranks, cfg, record, rid, path)
    finally:
        ranks_of_cell.__exit__(None, None, None)


def _run_as(ranks: dp.Ranks, cfg, record: dict, rid: str, path: Path) -> str:
    from tunebench.core.engine import Diverged
    from tunebench.datasets.refine import AwaitingLabels, RefineContext

    config = record["config"]
    record["env"] = rec.environment(_device(cfg))  # first, so that even an early failure names its job
    logger_name = str(cfg.logger.name) if ranks.is_main else "none"  # one logger per run: rank 0's
    logger = LOGGERS.get(logger_name)(cfg.logger, config, rid, str(cfg.sweep))
    checkpoint = RunCheckpoint(Path(cfg.paths.checkpoints) / str(cfg.sweep) / rid / "train.pt", checkpoint_every(cfg))
    refine_ctx = RefineContext(seed=int(cfg.seed), cache_dir=Path(cfg.paths.cache), architecture=ModelFactory(cfg.model))
    if ranks.is_main:
        log.info("run %s: method=%s seed=%s -> %s", rid, cfg.method.name, cfg.seed, path)
    builds_before = len(BUILT_HERE)
    try:
        _execute(cfg, record, refine_ctx, checkpoint, logger.log)
        record["status"] = "ok"
    except Diverged as e:
        record["status"], record["error"] = "diverged", rec.error_info(e)
        log.warning("run %s diverged: %s", rid, e)
    except Preempted as e:  # SIGUSR1 with no launcher to requeue: checkpointed; the same command resumes
        record["status"], record["error"] = "failed", {**rec.error_info(e), "checkpoint_kept": True}
        log.warning("run %s stopped: %s", rid, e)
    except AwaitingLabels as e:  # a clean stop, not a failure: the same command resumes once labels are in
        record["status"], record["error"] = "awaiting_labels", {**rec.error_info(e), "labels_file": str(e.path)}
        log.warning("run %s stopped: %s", rid, e)
    except Exception as e:
        record["status"], record["error"] = "failed", rec.error_info(e)
        if ranks.active:
            record["error"].update(rank=ranks.rank, ranks=ranks.world, message=_rank_message(ranks, cfg, e))
            if dp.lost_peer(e):  # another rank died (a node, an OOM kill): its work so far is not at fault
                record["error"]["checkpoint_kept"] = True
                record["error"]["message"] += "; the cell's checkpoint (if any) is kept: running the cell again resumes from it"
        message = record["error"]["message"] if ranks.active else f"{type(e).__name__}: {e}"
        log.error("run %s failed: %s", rid, message)  # the traceback is in the record
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            log.error("%s", record["error"]["traceback"])
    record.setdefault("resumed_from_step", 0)
    record["cache_builds"] = builds_since(builds_before)  # artefacts this run built (a cold cache) rather than loaded
    record["finished_at"] = rec.now_iso()
    kept = path
    if _writes_record(ranks, record, path):
        kept = rec.write_record(path, record)  # a folder that stopped accepting files: kept elsewhere, named
        if not (record.get("error") or {}).get("checkpoint_kept"):
            checkpoint.clear()  # the record is final (a failed cell reruns from zero, with the fix)
        _log_outcome(record, kept)
    logger.finish(record)
    return "unsaved" if kept != path else record["status"]  # a record not where it belongs is no success


def _rank_message(ranks: dp.Ranks, cfg, error: Exception) -> str:
    """A rank's error, with its rank; a collective that timed out says what that means."""
    text = f"rank {ranks.rank} of {ranks.world}: "
    if "timed out" in str(error).lower():
        text += (f"a collective waited longer than train.dist_timeout_s={cfg.train.dist_timeout_s} s: another rank "
                 f"stopped answering (it died, hung, or is much slower). ")
    return text + f"{type(error).__name__}: {error}"


def _writes_record(ranks: dp.Ranks, record: dict, path: Path) -> bool:
    """Rank 0 writes the record; a rank that failed writes its `failed` record itself (rank 0 may be
    waiting on it, or be stopped by the launcher), unless another rank already recorded this run's
    failure: the first failure is the cause, a collective timing out after it is not."""
    if not ranks.active:
        return True
    if record["status"] != "failed":
        return ranks.is_main
    try:
        existing = rec.read_record(path)
    except (FileNotFoundError, ValueError):
        return True
    earlier = existing.get("status") == "failed" and str(existing.get("finished_at", "")) >= str(record["started_at"])
    if earlier and (existing.get("error") or {}).get("rank") != ranks.rank:
        log.info("run %s: rank %s recorded the failure first (%s); rank %d's own error was: %s", record["run_id"],
                 existing["error"].get("rank"), existing["error"].get("message"), ranks.rank, record["error"]["message"])
        return False
    return True


def _log_outcome(record: dict, path: Path) -> None:
    m, c = record["metrics"], record["cost"]
    if record["status"] == "ok" and "test_acc" in m:
        f1 = m.get("test_macro_f1")
        log.info(
            "done %s: test acc %.4f  macro-F1 %s  trainable %s (%.3f%%)  peak mem %s MB  train %.1f s  -> %s",
            record["run_id"], m["test_acc"], "n/a" if f1 is None else f"{f1:.4f}", c.get("params_trainable"),
            c.get("trainable_pct", 0.0), c.get("peak_memory_mb"), c.get("train_seconds", 0.0), path,
        )
    else:
        log.info("done %s: %s -> %s", record["run_id"], record["status"], path)


class SweepSummary(Callback):
    """At the end of a multirun, reads every launched cell's record and counts the outcomes.

    Records, not launcher return values: with submitit the jobs run (and their callbacks fire) on
    the nodes, and a job SLURM lost has no return value at all (it counts as `missing`).
    """

    outcomes: list[str] = []

    def on_multirun_end(self, config, **kwargs) -> None:
        from tunebench.app.sweeper import LAUNCHED, LOST

        if dp.launch_rank() > 0:  # a multirun under torchrun: rank 0 sums it up
            return

        SweepSummary.outcomes = [_outcome(cell) for cell in LAUNCHED]
        counts = {s: SweepSummary.outcomes.count(s) for s in OUTCOMES}
        jobs = {s: sorted(job for rid, (state, job) in LOST.items() if _lost_outcome(state) == s) for s in ("cancelled", "lost")}
        log.info(
            "sweep '%s': %d cells: %s  (records: %s)", config.sweep, len(SweepSummary.outcomes),
            ", ".join(f"{n} {OUTCOMES[s]}" + (f" (SLURM job {', '.join(jobs[s])})" if jobs.get(s) else "")
                      for s, n in counts.items() if n), Path(config.paths.runs) / str(config.sweep),
        )
        _stop_idle_workers(config)


def _stop_idle_workers(config) -> None:
    """launcher=parallel: the joblib (loky) worker processes stop with the sweep. Left idle they exit only after
    loky's 5-minute timeout, and a process that ran the sweep as a multiprocessing child waits for them at exit."""
    from tunebench.app.cell import JOBLIB_LAUNCHER

    if config.hydra.launcher.get("_target_") != JOBLIB_LAUNCHER:
        return
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


OUTCOMES = {"ok": "ok", "skipped": "skipped", "elsewhere": "run by another process", "failed": "failed",
            "diverged": "diverged", "awaiting_labels": "awaiting_labels", "cancelled": "cancelled",
            "lost": "lost", "missing": "missing"}


def _lost_outcome(slurm_state: str) -> str:
    """A job that ended without a record: `cancelled` (scancel) or `lost` (time limit, node failure, OOM)."""
    return "cancelled" if slurm_state.startswith("CANCELLED") else "lost"


def _outcome(cell: dict) -> str:
    from tunebench.app.sweeper import LOST

    if cell["run_id"] in NOT_RUN_HERE:
        return NOT_RUN_HERE[cell["run_id"]]
    try:
        record = rec.read_record(rec.record_path(Path(cell["sweep_dir"]), cell["run_id"]))
    except (FileNotFoundError, ValueError):
        return _lost_outcome(LOST[cell["run_id"]][0]) if cell["run_id"] in LOST else "missing"
    if record["status"] == "ok" and str(record.get("finished_at", "")) < cell["launched_at"]:
        return "skipped"  # finished by an earlier launch
    return record["status"]
