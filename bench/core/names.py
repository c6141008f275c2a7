"""Names that become parts of paths: a sweep, a published sweep, a task, a refinement, a method, a model.

A name a user gives (`sweep=...`, `data.task_name=...`) must never put a file outside the results folder. Names
that choose a folder (the sweep) are checked and refused with one line naming the key; names that only label a
file (a task or method in a plot's file name) are mapped to a safe component, with a short hash of the original
when the mapping changed it, so two different names never share a file.
"""
from __future__ import annotations

import hashlib
import re

SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,@-]{0,127}")
UNSAFE_CHARACTER = re.compile(r"[^A-Za-z0-9._+=,@-]")


class UnsafeName(ValueError):
    """A name that would not stay one folder or file under the results root."""


def check_component(value, key: str) -> str:
    """`value` as a single path component, or UnsafeName naming `key`."""
    text = "" if value is None else str(value)
    if not SAFE.fullmatch(text) or text in (".", ".."):
        raise UnsafeName(f"{key}={text!r}: expected a plain name (letters, digits and . _ + = , @ -, starting with a "
                         f"letter or digit, at most 128 characters): it names a folder under the results root")
    return text


def file_component(value) -> str:
    """Any text as a safe file-name component: unsafe characters become `_`; if anything changed (or the text is
    empty), a hash of the original keeps different names apart."""
    text = "" if value is None else str(value)
    if SAFE.fullmatch(text):
        return text
    cleaned = UNSAFE_CHARACTER.sub("_", text).lstrip("._-")[:80] or "name"
    return f"{cleaned}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
