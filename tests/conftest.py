"""Shared fixtures. Everything runs offline: packaged assets, local files, a tiny local model."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def threads_per_worker(cores: int, workers: int) -> int:
    """The torch / OpenMP threads each pytest-xdist worker may use: its share of the cores. Two workers that each
    run 2 OpenMP threads on 2 cores wait on each other's spinning threads: two concurrent 40-step MiniLM cells took
    202 s at the default threads and 97 s at 1 thread each on this 2-core machine."""
    return max(1, cores // max(1, workers))


# In each xdist worker (not the controller, whose environment the workers inherit), before torch is imported here;
# inherited by every `tunebench` process a test starts. A run without xdist keeps torch's default (all cores).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_worker(
        len(os.sched_getaffinity(0)), int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

ROOT = Path(__file__).resolve().parents[1]
TUNEBENCH = [sys.executable, "-m", "tunebench.app.cli"]

# Small but real settings for CLI runs: packaged MiniLM, few sentences, no wandb.
TINY = [
    "logger=none", "data.train_size=64", "data.validation_size=64", "data.test_size=128", "data.pool_size=64",
    "train.evals=2", "train.batch_size=16",
]
# A multirun's cells in the test's own process: a child process per cell (the default, cell_process=auto) imports
# torch / transformers / peft again, ~10 s each on a 2-core machine. Tests of what the child process is for (peak
# memory that does not depend on the cells before it, a child that dies) and the default path of `make run`
# (test_e2e's first test) keep the default.
IN_PROCESS = "cell_process=false"


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT saved as a local HF folder with the packaged MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tunebench.core.models import resolve_source

    out = tmp_path_factory.mktemp("tiny-bert")
    minilm, _ = resolve_source("minilm")
    tokenizer = AutoTokenizer.from_pretrained(minilm, local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    __import__("torch").manual_seed(2)  # the same weights in every session; with seed 2 the continual claim test's two arms differ on some example
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama (a causal LM) saved as a local HF folder, with the packaged MiniLM tokenizer
    ([MASK] as its end-of-sequence token, [PAD] for padding): the hub format, offline and fast."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunebench.core.models import resolve_source

    out = tmp_path_factory.mktemp("tiny-llama")
    minilm, _ = resolve_source("minilm")
    tokenizer = AutoTokenizer.from_pretrained(minilm, local_files_only=True)
    tokenizer.eos_token = "[MASK]"
    __import__("torch").manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def pytest_collection_modifyitems(config, items):
    """Files with the most slow tests first (order within a file kept): `make test` hands whole files to its xdist
    workers in this order, so the long files start at once and the short ones fill in at the end, instead of one
    long file running alone on one thread at the end. (Side by side they no longer slow each other: each worker
    has its own share of the cores, see threads_per_worker.)"""
    slow = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    position = {item: i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-slow[item.path], position[item]))


def run_tunebench(args: list[str], cwd: Path, timeout: int = 900, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """`tunebench <args>` in a new process (forked with the heavy imports done: tests/cli_process.py)."""
    from .cli_process import run_cli

    env = {**os.environ, "TUNEBENCH_RESULTS": str(Path(cwd) / "results"), "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return run_cli(TUNEBENCH, args, cwd, env, timeout)


@pytest.fixture(scope="module")
def fashion_files():
    """The Debian Fashion-MNIST files (data=fashion_mnist and fashion_mnist_captions read the same root)."""
    from omegaconf import OmegaConf

    root = Path(OmegaConf.load(ROOT / "conf" / "data" / "fashion_mnist.yaml").root)
    if not (root / "train-images-idx3-ubyte.gz").exists():
        reason = f"Fashion-MNIST not installed in {root} (make installs dataset-fashion-mnist when root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return root
