"""Experiment loggers. wandb runs offline by default and never blocks a run: if it cannot start,
the run goes on without it (the JSON record is the source of truth)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from tunebench.core.registry import Registry

log = logging.getLogger("tunebench")
LOGGERS: Registry = Registry("logger")


@LOGGERS.register("none")
class NullLogger:
    def __init__(self, cfg, config: dict, run_id: str, sweep: str):
        pass

    def log(self, metrics: dict, step: int | None = None) -> None:
        pass

    def finish(self, record: dict) -> None:
        pass


@LOGGERS.register("wandb")
class WandbLogger(NullLogger):
    def __init__(self, cfg, config: dict, run_id: str, sweep: str):
        # The environment variable, not just the init argument, keeps wandb from trying the network.
        os.environ["WANDB_MODE"] = str(cfg.mode)
        os.environ.setdefault("WANDB_SILENT", "true")
        Path(cfg.dir).mkdir(parents=True, exist_ok=True)
        self.run = None
        try:
            import wandb

            self.run = wandb.init(
                project=cfg.project, dir=str(cfg.dir), mode=str(cfg.mode), config=config,
                name=run_id, group=sweep, reinit="finish_previous",
                settings=wandb.Settings(init_timeout=60, console="off"),
            )
        except Exception as e:  # a logger must never take a run down
            log.warning("wandb did not start (%s: %s); continuing without it", type(e).__name__, e)

    def log(self, metrics: dict, step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self, record: dict) -> None:
        if self.run is None:
            return
        for key, value in {**record.get("metrics", {}), **record.get("cost", {})}.items():
            if isinstance(value, (int, float)):
                self.run.summary[key] = value
        self.run.summary["status"] = record["status"]
        self.run.finish(exit_code=0 if record["status"] == "ok" else 1)
