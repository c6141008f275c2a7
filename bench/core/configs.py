"""Config groups as a run sees them: an option with its defaults list applied (`_peft.yaml`, ...)."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def compose_group(group: str, name: str, **changes) -> DictConfig:
    """`conf/<group>/<name>.yaml` composed as `tunebench run <group>=<name>` would, with `changes` merged in."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    # Hydra's basic sweeper: only the group's node is wanted, and tunebench's sweeper plugin is
    # registered by `tunebench run` (bench/app/run.py), not by a plain compose.
    overrides = [f"{group}={name}", "hydra/sweeper=basic"]
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app or another compose: use its config source
        cfg = compose("config", overrides=overrides)
    else:
        with initialize_config_module("tunebench.conf", version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    node = cfg[group]
    OmegaConf.set_struct(node, False)  # a plain config: callers may add keys (method.peft, ...)
    return OmegaConf.merge(node, changes)
