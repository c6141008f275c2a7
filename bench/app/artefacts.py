"""`tunebench artefacts SWEEP_DIR`: which cached artefacts a sweep used, which run built each one and
how many runs reused it.

Refinement reports name their cache entries as `cache_key` / `cache_built` (or `<what>_cache_key` /
`<what>_cache_built`, e.g. the generator a synthetic-data entry was sampled from), at any depth. A
healthy sweep builds every artefact once: `built` is 1 per key, and a re-run of the sweep adds no
build. Exit 1 if some key was built more than once (a cache that does not serve its sharers).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from tunebench.core.record import iter_records


def cache_uses(report, where: str = "") -> list[dict]:
    """Every (what, key, built) found in a refinement report, recursively."""
    uses = []
    if isinstance(report, dict):
        for name, value in report.items():
            if name.endswith("cache_key") and isinstance(value, str):
                prefix = name[: -len("cache_key")]
                what = prefix.rstrip("_") or where or "artefact"
                uses.append({"what": what, "key": value, "built": bool(report.get(f"{prefix}cache_built", False)),
                             "path": report.get(f"{prefix}cache_path")})
            elif isinstance(value, (dict, list)):
                uses += cache_uses(value, name if isinstance(value, dict) else where)
    elif isinstance(report, list):
        for item in report:
            uses += cache_uses(item, where)
    return uses


def artefact_frame(sweep_dir: Path) -> pd.DataFrame:
    rows = []
    for record in iter_records(Path(sweep_dir)):
        for refinement in record.get("refinements") or []:
            for use in cache_uses(refinement):
                rows.append({"refinement": refinement.get("name"), "run_id": record["run_id"], **use})
    return pd.DataFrame(rows, columns=["refinement", "run_id", "what", "key", "built", "path"])


def summarize(uses: pd.DataFrame) -> pd.DataFrame:
    """One row per cache key: what it is, which refinement used it, builds, runs that used it."""
    if uses.empty:
        return pd.DataFrame(columns=["refinement", "what", "key", "built", "runs", "built_by"])
    grouped = uses.groupby("key", sort=False)
    table = pd.DataFrame({
        "refinement": grouped["refinement"].agg(lambda s: ",".join(sorted(set(map(str, s))))),
        "what": grouped["what"].first(),
        "built": grouped["built"].sum().astype(int),
        "runs": grouped["run_id"].nunique(),
        "built_by": grouped.apply(lambda g: ",".join(g.loc[g.built, "run_id"].unique()) or "-", include_groups=False),
    }).reset_index()
    return table[["refinement", "what", "key", "built", "runs", "built_by"]].sort_values(["refinement", "what", "key"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunebench artefacts", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="folder of run records, e.g. results/runs/refine_text")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"tunebench artefacts: sweep directory {args.sweep_dir} does not exist")
        return 2
    try:
        table = summarize(artefact_frame(args.sweep_dir))
    except ValueError as e:  # a corrupt record: named in one line, as status / report / claim do
        print(f"tunebench artefacts: {e}")
        return 2
    if table.empty:
        print(f"no cached artefacts in the records under {args.sweep_dir}")
        return 0
    print(table.to_markdown(index=False))
    rebuilt = table[table.built > 1]
    print(f"\n{len(table)} artefacts, {int(table.built.sum())} builds, used by {int(table.runs.sum())} run-refinement pairs"
          + (f"; REBUILT: {', '.join(rebuilt.key)}" if len(rebuilt) else "; each built at most once"))
    return 1 if len(rebuilt) else 0
