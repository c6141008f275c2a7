"""Table writers that are safe to open: every string a user or a record supplies (task, class and method names,
error messages) is escaped for the format it lands in.

* Markdown: a `|` would end the cell and a `<` that opens a tag (`<img onerror=...>`, `<script>`) would be live HTML
  in any viewer that renders it; both are escaped, newlines become spaces. `<=` and `< 5` stay as they are.
* CSV: a cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to a spreadsheet; such text
  cells get a leading `'` (OWASP's CSV-injection rule). Numbers are left alone.
* LaTeX: the ten special characters are escaped in cells, headers and the caption (pandas' Styler escaping), so a
  name like `seeds_ok` or `\\input{/etc/hostname}` is text, not a command; characters outside ASCII that pdfLaTeX
  does not know are typeset as math or named, so the table compiles without extra packages.
"""
from __future__ import annotations

import re

import pandas as pd

TAG_OPENER = re.compile(r"<(?=[A-Za-z/!?])")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                 "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def markdown_cell(value) -> str:
    if not isinstance(value, str):
        return value
    text = value.replace("\r", " ").replace("\n", " ").replace("|", r"\|")
    return TAG_OPENER.sub("&lt;", text)


def markdown_table(frame: pd.DataFrame, **kwargs) -> str:
    """`frame.to_markdown` with every text cell and header escaped (markdown_cell)."""
    safe = frame.rename(columns=lambda c: markdown_cell(str(c))).map(markdown_cell)
    return safe.to_markdown(**kwargs)


def csv_cell(value):
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write_csv(frame: pd.DataFrame, path, **kwargs) -> None:
    """`frame.to_csv` with text cells that a spreadsheet would run as a formula made inert (csv_cell)."""
    frame.map(csv_cell).rename(columns=lambda c: csv_cell(str(c))).to_csv(path, **kwargs)


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))


# Characters the tables use that pdfLaTeX's default input encoding does not know, typeset as math or dashes; any
# other character outside ASCII is named by latex_text, so a table always compiles.
LATEX_UNICODE = {"±": r"$\pm$", "ε": r"$\varepsilon$", "δ": r"$\delta$", "→": r"$\rightarrow$", "≤": r"$\le$",
                 "≥": r"$\ge$", "×": r"$\times$", "—": "---", "–": "--", "…": r"\ldots{}", "µ": r"$\mu$", "α": r"$\alpha$"}


def latex_text(text: str) -> str:
    """Known non-ASCII characters as LaTeX; any other as the text `[U+XXXX]`."""
    return "".join(LATEX_UNICODE.get(ch, ch if ord(ch) < 128 else f"[U+{ord(ch):04X}]") for ch in text)


def latex_table(frame: pd.DataFrame, caption: str) -> str:
    """A booktabs table of `frame` with cells, headers and caption escaped, that pdfLaTeX compiles as it is."""
    styler = frame.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    return latex_text(styler.to_latex(hrules=True, caption=latex_escape(caption)))
