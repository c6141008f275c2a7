"""Launcher profiles (conf/launcher/) compose into the submitit launcher with their settings."""
import pytest
from hydra import compose, initialize_config_module


def composed(*overrides):
    with initialize_config_module("tunebench.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("profile, target, threads", [
    ("basic", "BasicLauncher", None),
    ("submitit_local", "submitit_launcher.LocalLauncher", None),
    ("slurm_local", "submitit_launcher.SlurmLauncher", 1),
    ("slurm_cpu", "submitit_launcher.SlurmLauncher", 8),
    ("slurm_gpu", "submitit_launcher.SlurmLauncher", None),
])
def test_profiles_select_the_launcher_and_set_threads(profile, target, threads):
    cfg = composed(f"launcher={profile}")
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.threads == threads  # the profile wins over config.yaml's default (null)
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.tunebench_sweeper.TunebenchSweeper"


def test_slurm_profiles_requeue_with_time_to_checkpoint():
    for profile in ("slurm_local", "slurm_cpu", "slurm_gpu"):
        launcher = composed(f"launcher={profile}").hydra.launcher
        assert launcher.max_num_timeout >= 3 and launcher.additional_parameters.requeue is True
        assert launcher.timeout_min * 60 >= 10 * launcher.signal_delay_s
    gpu = composed("launcher=slurm_gpu", "hydra.launcher.partition=a100").hydra.launcher
    assert gpu.partition == "a100" and gpu.gres == "gpu:1" and gpu.array_parallelism == 100
    assert gpu.setup[1].startswith("export HF_HOME=${SCRATCH:-$HOME}/hf")  # a literal ${ for the shell


@pytest.mark.parametrize("profile, overrides, child", [
    ("basic", [], True),  # each cell of a local multirun in its own process: peak memory independent of order
    ("basic", ["count_only=true"], False),  # counts only: a child would add nothing but its start-up
    ("basic", ["count_only=true", "cell_process=true"], True),  # asked for
    ("submitit_local", [], False),  # submitit's jobs are processes already
])
def test_which_multirun_cells_run_in_a_child_process(profile, overrides, child):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from tunebench.app.cell import wanted

    cfg = composed(f"launcher={profile}", *overrides)
    cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    try:
        assert wanted(cfg) is child
    finally:
        HydraConfig.instance().cfg = None
