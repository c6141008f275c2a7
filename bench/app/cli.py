"""`tunebench` command line: run (Hydra), report, claim, status, perf, reproduce."""
from __future__ import annotations

import argparse
import sys

USAGE = """tunebench <command> [args]

commands:
  run [hydra overrides]   run one cell or a sweep (-m), e.g. tunebench run -m experiment=quick
                          (tunebench run --help shows the config groups and options)
  report SWEEP_DIR        tables (md, csv, tex) and plots from the records of a sweep; --html: one self-contained
                          page; --compare A B: two sweeps side by side
  claim SWEEP_DIR         the PEFT-claim verdicts, one comparison per configuration (t-intervals, Holm-adjusted;
                          sequential and primary-first when the sweep declared decide.* / claim.primary)
  plan SWEEP_DIR          what deciding the undecided parts would take: seeds for 80% / 90% power and their cost
  decide [overrides]      run a sweep in rounds of seeds until each comparison is decided (decide.max_seeds=N)
  status SWEEP_DIR        every cell as ok / failed / diverged, with its error; exit 1 unless all ok
  artefacts SWEEP_DIR     cached refinement artefacts: built once by which run, reused by how many
  publish SWEEP_DIR       tables, claim and a copy of every record into results/published/<sweep>/
  docs [--check]          refill the README's published blocks from results/published/ (--check: exit 1 if stale)
  calibrate               the claim's error rates and power by simulation -> results/published/calibration/
  perf                    harness overhead and LoRA/full step-time benchmark
  reproduce [TARGETS]     published figures (targets/*.csv) checked against the records; --run runs what is missing

`tunebench <command> --help` gives each command's options.
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        from tunebench.app import run

        sys.argv = ["tunebench run", *rest]
        return run.main()
    handlers = {"report": "tunebench.app.report", "claim": "tunebench.app.claim", "plan": "tunebench.app.plan", "decide": "tunebench.app.decide", "status": "tunebench.app.status", "artefacts": "tunebench.app.artefacts",
                "publish": "tunebench.app.publish", "docs": "tunebench.app.publish:docs_main", "calibrate": "tunebench.app.calibration",
                "perf": "tunebench.app.perf", "reproduce": "tunebench.app.reproduce"}
    if command not in handlers:
        print(f"tunebench: unknown command {command!r}; commands: run, {', '.join(handlers)}", file=sys.stderr)
        return 2
    import importlib

    module, _, function = handlers[command].partition(":")
    return getattr(importlib.import_module(module), function or "main")(rest)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
