"""A run's numbers do not depend on whether a cache was warm: each family that caches an artefact (a converted
causal LM, few-shot embeddings, each refinement's data or weights) runs the same cell with a cold cache and
again with the cold run's cache copied in, and the two records agree example by example and point by point."""
import random
import shutil

import numpy as np
import pytest
import torch

from tunebench.app.runner import run_cell
from tunebench.core.cache import cached
from tunebench.core.record import NUMERIC_CPU_FLAGS, iter_records, numeric_cpu_flags

from .test_fewshot import TEXT as FEWSHOT_TEXT, tiny_encoder_dir, wordnet_or_skip  # noqa: F401 (a fixture)
from .test_images import DIGITS
from .conftest import TINY


def compose_in(root, monkeypatch, overrides):
    from hydra import compose, initialize_config_module

    monkeypatch.setenv("TUNEBENCH_RESULTS", str(root / "results"))
    with initialize_config_module("tunebench.conf", version_base="1.3"):
        return compose("config", overrides=["sweep=t", *overrides])


def cold_then_warm(tmp_path, monkeypatch, *overrides) -> tuple[dict, dict]:
    """The record of a cell run on an empty cache, and of the same cell run in a fresh results folder that
    holds only the first run's cache."""
    cold_root, warm_root = tmp_path / "cold", tmp_path / "warm"
    assert run_cell(compose_in(cold_root, monkeypatch, overrides)) == "ok"
    shutil.copytree(cold_root / "results" / "cache", warm_root / "results" / "cache")
    assert run_cell(compose_in(warm_root, monkeypatch, overrides)) == "ok"
    [cold] = iter_records(cold_root / "results" / "runs" / "t")
    [warm] = iter_records(warm_root / "results" / "runs" / "t")
    return cold, warm


def assert_same_numbers(cold: dict, warm: dict) -> None:
    assert cold["cache_builds"] and warm["cache_builds"] == []  # the first run built, the second only loaded
    assert cold["run_id"] == warm["run_id"]
    assert cold["metrics"]["test_correct"] == warm["metrics"]["test_correct"]
    assert cold["curve"] == warm["curve"]
    assert cold["metrics"]["best_val_acc"] == warm["metrics"]["best_val_acc"]


def test_a_cache_build_leaves_the_callers_random_streams_where_they_were(tmp_path):
    def build(folder):  # draws from every global stream, as a network's initialisation or a sampler does
        torch.nn.Linear(8, 8)
        (folder / "x.npy").write_bytes(np.random.bytes(8) + bytes([random.randrange(256)]))

    draws = []
    for _ in range(2):  # a miss (builds), then a hit (loads)
        torch.manual_seed(0), np.random.seed(0), random.seed(0)
        entry = cached(tmp_path, "drawing", {"k": 1}, build)
        draws.append((entry.built, torch.rand(2).tolist(), np.random.rand(), random.random()))
    assert [d[0] for d in draws] == [True, False] and draws[0][1:] == draws[1][1:]


def test_a_packaged_causal_lm_converted_during_the_run_gives_the_warm_caches_record(tmp_path, monkeypatch, tiny_llama_dir):
    """The SmolLM2 defect in miniature: a packaged decoder converted into the cache by the run itself (the same
    conversion, `save_plain_llama`, initialises a network before loading the weights) must not move the
    adapter's initialisation or dropout."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from tunebench.core.causal_models import save_plain_llama
    from tunebench.core.models import PACKAGED

    def tiny_packaged(cache_dir=None):
        def convert(out):
            save_plain_llama(LlamaForCausalLM.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir), out)

        return str(cached(cache_dir, "tiny-llama-hf", {"source": str(tiny_llama_dir)}, convert).path)

    monkeypatch.setitem(PACKAGED._entries, "tiny_packaged", tiny_packaged)
    cold, warm = cold_then_warm(tmp_path, monkeypatch, "logger=none", "data=arithmetic", "model=hf", "model.name=tiny_packaged",
                                "method=lora", "method.peft.lora_dropout=0.3", "data.train_size=24",
                                "data.validation_size=4", "data.test_size=6", "data.max_new_tokens=8",
                                "train.batch_size=8", "train.evals=1")
    assert cold["cache_builds"] == [next((tmp_path / "cold" / "results" / "cache").glob("tiny-llama-hf-*")).name]
    assert_same_numbers(cold, warm)


def test_few_shot_embeddings_built_during_the_run_give_the_warm_caches_record(tmp_path, monkeypatch, tiny_encoder_dir):
    wordnet_or_skip()
    cold, warm = cold_then_warm(tmp_path, monkeypatch, *TINY, f"model.name={tiny_encoder_dir}", "method=maml", *FEWSHOT_TEXT,
                                "method.iterations=5", "method.meta_batch=2")
    assert cold["metrics"]["fewshot"]["embedding_cache"]["cache_built"] is True
    assert_same_numbers(cold, warm)


REFINEMENTS = {  # small settings for each refinement that caches what it builds
    "validated": ["refine=validated"],
    "active": ["refine=active", "refine.active.seed_size=50", "refine.active.budget=40", "refine.active.rounds=2"],
    "synthetic": ["refine=synthetic", "refine.synthetic.generator=diffusion", "refine.synthetic.ratio=0.05",
                  "+refine.synthetic.diffusion.steps=20", "+refine.synthetic.diffusion.sample_steps=2"],
    "augmented": ["refine=augmented", "refine.augmented.augmenter=transforms", "refine.augmented.max_examples=100"],
    "ssl": ["refine=ssl", "refine.ssl.steps=20"],
}


@pytest.mark.parametrize("refinement", sorted(REFINEMENTS))
def test_a_refinement_built_during_the_run_gives_the_warm_caches_record(tmp_path, monkeypatch, refinement):
    cold, warm = cold_then_warm(tmp_path, monkeypatch, *TINY, *DIGITS, "method=full",
                                *REFINEMENTS[refinement])
    assert_same_numbers(cold, warm)


def test_the_numeric_cpu_flags_are_read_from_cpuinfo():
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse avx avx2 fma avx512f avx512_bf16 amx_tile ht\n"
    assert numeric_cpu_flags(cpuinfo) == ["avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"]
    assert numeric_cpu_flags("processor: 0\n") == []


def test_the_record_names_the_instruction_set_onednn_runs_and_the_probe_prints_nothing():
    """In a fresh interpreter: oneDNN announces its ISA once per process, so the probe must be the first to ask."""
    import json
    import subprocess
    import sys

    code = "import json; from tunebench.core.record import machine; print(json.dumps(machine()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    [line] = proc.stdout.splitlines()  # oneDNN's verbose lines went to the probe's file, not to the user
    found = json.loads(line)
    if torch.backends.mkldnn.is_available():
        assert found["onednn_isa"] and ("AVX" in found["onednn_isa"] or "SSE" in found["onednn_isa"]), found
    assert set(found["cpu_flags"]) <= set(NUMERIC_CPU_FLAGS)
