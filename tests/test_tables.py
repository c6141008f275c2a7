"""Every table a user opens is safe and valid: hostile names through each writer, and every published LaTeX table
compiled with a real TeX engine."""
import os
import shutil
import subprocess

import pytest

from tunebench.app.tables import csv_cell, latex_escape, markdown_cell

from .conftest import ROOT

HOSTILE_TASK = '=HYPERLINK("http://x","y")'
HOSTILE_METHOD = "<img src=x onerror=alert(1)>|<script>x</script>"
HOSTILE_REFINE = r"\input{/etc/hostname}&#_%$~^"


def pdflatex_or_skip() -> str:
    engine = shutil.which("pdflatex")
    if engine is None:
        reason = "pdflatex missing (Debian texlive-latex-base + texlive-latex-recommended; make installs them when root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return engine


def compiles(tmp_path, tables: list) -> subprocess.CompletedProcess:
    body = "\n".join(rf"\input{{{t}}}" for t in tables)
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                      f"{body}\n\\end{{document}}\n")
    return subprocess.run([pdflatex_or_skip(), "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "doc.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.fixture()
def hostile_tables(tmp_path):
    from tunebench.app.claim import main as claim_main
    from tunebench.app.report import main as report_main

    from .test_report_claim import full_runs, write_run

    sweep = tmp_path / "results" / "runs" / "s"
    for seed in (0, 1, 2):
        write_run(sweep, HOSTILE_METHOD, seed, 0.8, task=HOSTILE_TASK, refine=HOSTILE_REFINE)
    full_runs(sweep, [0.81, 0.82, 0.8], task=HOSTILE_TASK, refine=HOSTILE_REFINE)
    assert report_main([str(sweep)]) == 0 and claim_main([str(sweep)]) == 0
    return tmp_path / "results" / "tables" / "s"


def test_markdown_tables_carry_no_live_html_and_keep_their_columns(hostile_tables):
    for name in ("results.md", "claim.md"):
        text = (hostile_tables / name).read_text()
        assert "<img" not in text and "<script" not in text and "&lt;img src=x onerror=alert(1)>" in text, name
        assert r"\|&lt;script>" in text, name  # the pipe is escaped, so the row keeps its column count
    rows = [line for line in (hostile_tables / "results.md").read_text().splitlines() if line.startswith("|")]
    assert len({line.replace(r"\|", "").count("|") for line in rows}) == 1


def test_csv_cells_are_not_formulas(hostile_tables):
    text = (hostile_tables / "results.csv").read_text()
    assert "'=HYPERLINK" in text and "\n=HYPERLINK" not in text and ",=HYPERLINK" not in text


def test_the_latex_table_of_hostile_names_compiles_and_shows_them_as_text(hostile_tables, tmp_path):
    tex = (hostile_tables / "results.tex").read_text()
    assert r"\input{/etc" not in tex and r"\textbackslash input\{/etc/hostname\}" in tex
    proc = compiles(hostile_tables, ["results.tex"])
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_every_published_latex_table_compiles(tmp_path):
    tables = sorted((ROOT / "results" / "published").glob("*/results.tex"))
    assert len(tables) >= 10
    for i, table in enumerate(tables):
        shutil.copy(table, tmp_path / f"t{i}.tex")
    proc = compiles(tmp_path, [f"t{i}.tex" for i in range(len(tables))])
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_cell_escapers():
    assert markdown_cell("ratio <= 0.8, CI < 5") == "ratio <= 0.8, CI < 5"  # not a tag: left alone
    assert markdown_cell("a</b>\nc") == "a&lt;/b> c"
    assert csv_cell("-1 pt") == "'-1 pt" and csv_cell(-1.0) == -1.0 and csv_cell("lora") == "lora"
    assert latex_escape("50%_a") == r"50\%\_a"
