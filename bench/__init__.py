"""tunebench: when does parameter-efficient fine-tuning match full fine-tuning, and at what cost."""
from __future__ import annotations

import os
import sys

__version__ = "0.1.0"
RECORD_SCHEMA_VERSION = 1


def _keep_hf_datasets_importable() -> None:
    """The source folder `datasets/` (imported as tunebench.datasets) would shadow HuggingFace
    `datasets` whenever the project root is on sys.path (`python -m ...` run from the root adds
    it). Import the real one with the root masked, so later `import datasets` finds it cached."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    on_path = [p for p in sys.path if os.path.abspath(p or os.curdir) == root]
    if not on_path or hasattr(sys.modules.get("datasets"), "load_dataset"):
        return
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if p not in on_path]
    try:
        import datasets  # noqa: F401  (HuggingFace datasets)
    except ImportError:
        pass
    finally:
        sys.path[:] = saved


_keep_hf_datasets_importable()
