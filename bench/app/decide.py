"""`tunebench decide [overrides]`: run a sweep in rounds of seeds until each comparison is decided.

    tunebench decide experiment=quick decide.max_seeds=10
    tunebench decide experiment=refine_text decide.max_seeds=8 launcher=slurm_cpu    (each round: a SLURM array)

The sweep's grid is the experiment's (`hydra.sweeper.params`, or comma lists on this command line) without its
seeds. Round k runs the cells the claim still needs at look k (seeds 0 .. S_k - 1, `decide.*`): every cell in the
first round; afterwards only the PEFT arm and the reference of a comparison with a stochastic part in
`decide.parts` that is still inconclusive. Each round is one `tunebench run -m` per group of cells (with the
launcher given here), so finished cells are skipped by the runner as always. After each round the claim judges
the records with the group-sequential design they declare (`tunebench.app.sequential`).

Nothing is kept but the records: a killed driver started again with the same command derives the round from
them, launches nothing for cells that have ok records, and ends with the same cells and verdicts as one that was
never stopped.
"""
from __future__ import annotations

import argparse
import itertools
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tunebench.app.claim import PART_KINDS, arm_method
from tunebench.app.compose import compose_config, split_overrides

@dataclass(frozen=True)
class Cell:
    """One grid point without its seed: the overrides that select it, and what the claim calls it."""
    overrides: tuple[str, ...]
    comparison: str  # the claim's comparison key (tunebench.app.frame)
    method: str


@dataclass
class Plan:
    fixed: list[str]
    cells: list[Cell]
    looks: list[int]
    parts: tuple[str, ...]
    runs: Path
    sweep: str


def plan_sweep(overrides: list[str]) -> Plan:
    """The grid, the looks and where the records go; bad input fails here, before any run."""
    from tunebench.app.frame import comparison_key
    from tunebench.app.runner import semantic_config
    from tunebench.app.sequential import Design
    from tunebench.core.config_check import check_run_config

    fixed, swept = split_overrides(overrides)
    if "seed" in swept or any(o.startswith("seed=") for o in fixed):
        raise ValueError("seed: tunebench decide chooses the seeds (0 .. decide.max_seeds - 1); leave seed out")
    cfg = compose_config(fixed, hydra_config=True)
    check_run_config(cfg)
    decide = cfg.decide
    if decide.max_seeds is None:
        raise ValueError("decide.max_seeds is not set: name the most seeds per arm, e.g. decide.max_seeds=10")
    design = Design(max_seeds=int(decide.max_seeds), first=int(decide.first_seeds), step=int(decide.round_seeds),
                    spending=str(decide.spending))
    parts = tuple(decide.parts)  # checked by check_run_config; its default lives in conf/config.yaml
    params = {str(k): [v.strip() for v in str(values).split(",")] for k, values in (cfg.hydra.sweeper.params or {}).items()}
    params.update(swept)
    params.pop("seed", None)
    combos = [tuple(f"{k}={v}" for k, v in zip(params, values)) for values in itertools.product(*params.values())] or [()]
    cells = []
    for combo in combos:
        composed = compose_config([*fixed, *combo, "seed=0"])
        cells.append(Cell(combo, comparison_key(semantic_config(composed)), str(composed.method.name)))
    runs = Path(str(cfg.paths.runs)) / str(cfg.sweep)
    _check_same_plan(runs, cfg)
    return Plan(fixed, cells, design.looks(), parts, runs, str(cfg.sweep))


def _check_same_plan(runs: Path, cfg) -> None:
    """Records already in the sweep folder must have been run under the same declared plan: seeds judged before
    the design was declared would be a look the design does not count."""
    from omegaconf import OmegaConf

    from tunebench.app.claim import declared_plans
    from tunebench.app.frame import declared_plan, load_frame

    if not any(runs.glob("*.json")):
        return
    mine = declared_plan({k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("claim", "decide")})
    plans = declared_plans(load_frame(runs))
    if plans - {mine}:
        raise ValueError(f"{runs} holds records run under another plan ({sorted(plans - {mine})[0]}); this command "
                         f"declares {mine}. Seeds judged before a design was declared are a look it does not count: "
                         f"give this design its own folder, e.g. sweep={cfg.sweep}_decided")


def needed(plan: Plan, look: int) -> list[Cell]:
    """The cells that take part in look `look` (an index): all at the first; afterwards the arms of every
    comparison with a part in `plan.parts` that the records leave inconclusive (and testable)."""
    if look == 0 or not plan.runs.exists():
        return plan.cells
    from tunebench.app.claim import check
    from tunebench.app.frame import load_frame

    try:
        comparisons = check(load_frame(plan.runs))
    except FileNotFoundError:
        return plan.cells
    open_arms = set()
    for c in comparisons:
        undecided = [p for p in c["parts"] if PART_KINDS.get(p["part"]) in plan.parts and p["p_value"] is not None
                     and p["verdict_adjusted"] == "inconclusive"]
        if undecided:
            open_arms |= {(c["comparison"], arm_method(c["peft"])), (c["comparison"], arm_method(c["reference"]))}
    return [cell for cell in plan.cells if (cell.comparison, cell.method) in open_arms]


def launches(cells: list[Cell], seeds: int) -> list[list[str]]:
    """`tunebench run -m` override lists covering `cells` at seeds 0 .. seeds - 1: one per group of cells that differ
    only in the method."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for cell in cells:
        rest = tuple(o for o in cell.overrides if not o.startswith("method="))
        groups.setdefault(rest, []).extend(o.split("=", 1)[1] for o in cell.overrides if o.startswith("method="))
    seed_list = ",".join(map(str, range(seeds)))
    # seed first: the cells run seed by seed, so the arms the claim pairs run next to each other, under the same load
    return [[f"seed={seed_list}", *rest, *([f"method={','.join(dict.fromkeys(methods))}"] if methods else [])]
            for rest, methods in groups.items()]


def missing_cells(plan: Plan, cells: list[Cell], seeds: int) -> int:
    """How many of the cells x seeds have no ok record yet (composed and hashed as `tunebench run` does)."""
    from tunebench.app.runner import semantic_config
    from tunebench.core.record import existing_status, run_id

    count = 0
    for cell in cells:
        for seed in range(seeds):
            config = semantic_config(compose_config([*plan.fixed, *cell.overrides, f"seed={seed}"]))
            count += existing_status(plan.runs, run_id(config)) != "ok"
    return count


def run_round(plan: Plan, cells: list[Cell], seeds: int, extra_env: dict | None = None) -> None:
    import os

    for overrides in launches(cells, seeds):
        command = [sys.executable, "-m", "tunebench.app.run", "-m", *plan.fixed, *overrides]
        print(f"[decide] tunebench run -m {' '.join(map(shlex.quote, [*plan.fixed, *overrides]))}", flush=True)
        subprocess.run(command, check=False, env={**os.environ, **(extra_env or {})})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunebench decide", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None, help="stop after this many rounds (the next call goes on)")
    args, overrides = parser.parse_known_args(argv)
    try:
        plan = plan_sweep(overrides)
    except Exception as e:  # a config error, an unknown key or group: one line, nothing run
        print(f"tunebench decide: {e}")
        return 2
    rounds = 0
    for index, seeds in enumerate(plan.looks):
        cells = needed(plan, index)
        if not cells:
            print(f"[decide] every comparison is decided after {plan.looks[index - 1]} seeds")
            break
        todo = missing_cells(plan, cells, seeds)
        print(f"[decide] look {index + 1}/{len(plan.looks)}: {seeds} seeds for {len(cells)} of {len(plan.cells)} "
              f"grid cells; {todo} cell run(s) missing", flush=True)
        if todo:
            if args.rounds is not None and rounds >= args.rounds:
                print(f"[decide] stopped after {rounds} round(s) (--rounds); the same command goes on from here")
                return 0
            run_round(plan, cells, seeds)
            rounds += 1
    from tunebench.app.claim import main as claim_main

    return claim_main([str(plan.runs)])
