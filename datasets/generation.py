"""Generation tasks (modality "generation"): a prompt, and the completion a causal LM should write.

- `rotten_tomatoes_gen` / `imdb_gen`: the sentiment tasks of `builtin.py` (same fixed splits), with the
  label word ("negative" / "positive") as the completion. Scored by exact match of the generated word
  and by constrained choice (the label word with the highest log-likelihood).
- `arithmetic`: SYNTHETIC multi-step arithmetic word problems in the GSM8K format (question, worked
  solution, `#### answer`; the solution is two terse equation lines, to keep sequences short on a CPU),
  made here from seeded templates; no download. Train, validation and test
  take their leading quantity from disjoint number ranges (`data.ranges`), so no test problem appears
  in training and the test measures whether the procedure generalises to unseen numbers, not recall.
  Scored by exact match of the final number.
- `hf_generation`: question / answer columns of any HuggingFace dataset or local json / csv / parquet
  files (`data=hf_generation`: MetaMathQA to train, GSM8K to test, as in peft's method_comparison benchmark).

A split's `x` is the question (or review), `targets` the completion, `y` the class index for label
tasks (-1 for open answers). `meta.prompt_template` turns an `x` into the prompt (`{text}`), and
`meta.answers` says how to score: `label` (the completion is one class word) or `gsm8k` (the text
after the last `####` is a number).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace

import numpy as np

from . import TASKS
from .task import Split, Task

# -- answers -------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")


_ANSWER_IS = re.compile(r"the answer is:?", re.IGNORECASE)


def final_answer(text: str) -> str:
    """The answer part of a completion: after the last `####` (GSM8K) or "The answer is:" (MetaMathQA)
    if there is one, else the whole text."""
    text = str(text)
    if "####" in text:
        return text.rsplit("####", 1)[-1].strip()
    parts = _ANSWER_IS.split(text)
    return parts[-1].strip() if len(parts) > 1 else text.strip()


def normalise_answer(text: str) -> str:
    """Comparable form: first line, lower case, no surrounding punctuation; numbers without thousands
    separators, currency, a plus sign or trailing zeros ("$1,200.00" -> "1200", "+7" -> "7", "−3" -> "-3")."""
    text = str(text).strip().split("\n", 1)[0].strip().lower().replace("\u2212", "-")
    text = text.strip(" .!?;:\"'")
    number = text.replace(",", "").replace("$", "").strip()
    if _NUMBER.match(number):
        value = float(number)
        return str(int(value)) if value == int(value) else repr(value)
    return text


def exact_match(prediction: str, target: str, answers: str) -> bool:
    """Does the generated completion give the target's answer? `answers`: label | gsm8k."""
    if answers == "gsm8k":
        return normalise_answer(final_answer(prediction)) == normalise_answer(final_answer(target))
    return normalise_answer(prediction) == normalise_answer(target)


def most_frequent_answer_accuracy(train_answers: list[str], test_answers: list[str]) -> float:
    """Exact match of always writing the most frequent training answer (the trivial baseline)."""
    if not train_answers or not test_answers:
        return float("nan")
    common = Counter(normalise_answer(a) for a in train_answers).most_common(1)[0][0]
    return float(np.mean([normalise_answer(a) == common for a in test_answers]))


# -- label tasks as generation ------------------------------------------------------------------------
def as_generation(task: Task, name: str, cfg) -> Task:
    """A classification task whose completion is the class word."""
    def convert(split: Split) -> Split:
        return replace(split, targets=[task.classes[int(y)] for y in split.y])

    meta = {**task.meta, "prompt_template": str(cfg.prompt_template), "instruction": cfg.get("instruction"),
            "answers": "label", "base_task": task.name,
            "max_new_tokens": int(cfg.max_new_tokens)}
    return replace(task, name=name, modality="generation", train=convert(task.train), validation=convert(task.validation),
                   test=convert(task.test), pool=task.pool, meta=meta)  # the pool keeps its labels hidden


@TASKS.register("rotten_tomatoes_gen")
def rotten_tomatoes_gen(cfg) -> Task:
    from .builtin import rotten_tomatoes

    return as_generation(rotten_tomatoes(cfg), "rotten_tomatoes_gen", cfg)


@TASKS.register("imdb_gen")
def imdb_gen(cfg) -> Task:
    from .builtin import imdb

    return as_generation(imdb(cfg), "imdb_gen", cfg)


# -- synthetic arithmetic word problems -----------------------------------------------------------------
NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena", "Mateo", "Nia"]
THINGS = ["apples", "stickers", "marbles", "books", "coins", "shells", "pencils", "cards"]


_OPERATIONS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y, "/": lambda x, y: x // y}


def two_steps(a: int, first: str, b: int, second: str, c: int) -> str:
    """The worked solution `a first b = r`, `r second c = answer`, and `#### answer` (GSM8K's last line)."""
    r = _OPERATIONS[first](a, b)
    answer = _OPERATIONS[second](r, c)
    return f"{a} {first} {b} = {r}\n{r} {second} {c} = {answer}\n#### {answer}"


def _bought_and_gave(rng, a):
    name, things, b, c = rng.choice(NAMES), rng.choice(THINGS), int(rng.integers(2, 30)), int(rng.integers(2, 20))
    return (f"{name} had {a} {things}. {name} bought {b} more and then gave {c} to a friend. "
            f"How many {things} does {name} have now?"), two_steps(a, "+", b, "-", c)


def _boxes(rng, a):
    name, things, k, c = rng.choice(NAMES), rng.choice(THINGS), int(rng.integers(2, 6)), int(rng.integers(1, 10))
    return (f"A box holds {a} {things}. {name} has {k} boxes and {c} loose {things}. "
            f"How many {things} does {name} have in total?"), two_steps(k, "*", a, "+", c)


def _temperature(rng, a):
    b, c = int(rng.integers(a // 2 + 1, a + 30)), int(rng.integers(2, 15))
    return (f"The temperature was {a} degrees at noon. By evening it had dropped by {b} degrees, and by "
            f"midnight by {c} more. What was the temperature at midnight?"), two_steps(a, "-", b, "-", c)


def _library(rng, a):
    start = a * 100 + int(rng.integers(0, 10)) * 10
    m, k = int(rng.integers(2, 10)) * 10, int(rng.integers(2, 6))
    return (f"A library has {start:,} books. It buys {m} new books every month. "
            f"How many books does it have after {k} months?"), two_steps(k, "*", m, "+", start)


def _sharing(rng, a):
    name, things, k = rng.choice(NAMES), rng.choice(THINGS), int(rng.integers(2, 6))
    c = int(rng.integers(1, max(2, a // 2)))
    return (f"{name} shares {a * k} {things} equally among {k} friends. Each friend then loses {c} of them. "
            f"How many {things} does each friend have left?"), two_steps(a * k, "/", k, "-", c)


TEMPLATES = [_bought_and_gave, _boxes, _temperature, _library, _sharing]


def arithmetic_problems(n: int, low: int, high: int, seed: int) -> tuple[list[str], list[str]]:
    """`n` problems whose leading quantity is drawn from [low, high], templates in turn."""
    rng = np.random.default_rng(seed)
    questions, solutions = [], []
    for i in range(n):
        question, solution = TEMPLATES[i % len(TEMPLATES)](rng, int(rng.integers(low, high + 1)))
        questions.append(question)
        solutions.append(solution)
    return questions, solutions


def _ranges(cfg) -> dict:
    ranges = {k: tuple(int(v) for v in cfg.ranges[k]) for k in ("train", "validation", "test")}
    ordered = sorted(ranges.items(), key=lambda kv: kv[1][0])
    for (a, (lo_a, hi_a)), (b, (lo_b, _)) in zip(ordered, ordered[1:]):
        if lo_b <= hi_a:
            raise ValueError(f"data.ranges: {a} {list(ranges[a])} and {b} {list(ranges[b])} overlap; the splits need "
                             f"disjoint number ranges so that no test problem is a training problem")
    for split, (lo, hi) in ranges.items():
        if not 2 <= lo <= hi:
            raise ValueError(f"data.ranges.{split}={[lo, hi]}: expected [low, high] with 2 <= low <= high")
    return ranges


@TASKS.register("arithmetic")
def arithmetic(cfg) -> Task:
    ranges = _ranges(cfg)
    sizes = {"train": cfg.train_size, "validation": cfg.validation_size, "test": cfg.test_size}
    seed = int(cfg.split_seed)

    def split(name: str, offset: int) -> Split:
        questions, solutions = arithmetic_problems(int(sizes[name]), *ranges[name], seed * 1000 + offset)
        return Split(questions, np.full(len(questions), -1, dtype=np.int64), targets=solutions,
                     source="synthetic arithmetic (tunebench templates)")

    empty = Split([], np.zeros(0, dtype=np.int64), labeled=False, targets=[])
    meta = {"source": "synthetic: seeded templates in tunebench.datasets.generation (GSM8K format)",
            "prompt_template": str(cfg.prompt_template), "instruction": cfg.get("instruction"), "answers": "gsm8k",
            "max_length": int(cfg.max_length),
            "max_new_tokens": int(cfg.max_new_tokens),
            "ranges": {k: list(v) for k, v in ranges.items()}}
    return Task("arithmetic", "generation", [], split("train", 0), split("validation", 1), split("test", 2), empty, meta)


# -- HuggingFace question / answer datasets -----------------------------------------------------------------
def _qa_split(spec, what: str, limit) -> Split:
    from datasets import load_dataset

    files = spec.get("data_files")
    path = str(spec.path)
    try:
        data = load_dataset(path, spec.get("config_name"), data_files=dict(files) if files else None,
                            split=str(spec.split), revision=spec.get("revision"))
    except Exception as e:  # the hub, a missing file, a wrong split: say which of this task's parts failed
        raise ValueError(f"data.{what}: could not load {path!r} split {spec.split!r}: {e}") from e
    for key in ("question_column", "answer_column"):
        if spec[key] not in data.column_names:
            raise ValueError(f"data.{what}.{key}={spec[key]!r}: {path} has columns {data.column_names}")
    if limit is not None:
        data = data.select(range(min(int(limit), len(data))))
    return Split([str(q) for q in data[spec.question_column]], np.full(len(data), -1, dtype=np.int64),
                 targets=[str(a) for a in data[spec.answer_column]], source=f"{path} ({spec.split})")


@TASKS.register("hf_generation")
def hf_generation(cfg) -> Task:
    train = _qa_split(cfg.train, "train", cfg.train_size)
    test = _qa_split(cfg.test, "test", cfg.test_size)
    n_val = int(cfg.validation_size)
    rng = np.random.default_rng(int(cfg.split_seed))
    if cfg.get("validation") and cfg.validation.get("path"):  # its own source (peft's benchmark: a GSM8K train sample)
        pool = _qa_split(cfg.validation, "validation", None)
        validation = pool.subset(rng.permutation(len(pool))[:n_val])
    else:  # carved from the training data
        if n_val >= len(train):
            raise ValueError(f"data.validation_size={n_val}: the training data has only {len(train)} examples")
        order = rng.permutation(len(train))
        validation, train = train.subset(order[:n_val]), train.subset(order[n_val:])
    empty = Split([], np.zeros(0, dtype=np.int64), labeled=False, targets=[])
    meta = {"source": f"{cfg.train.path} -> {cfg.test.path}", "prompt_template": str(cfg.prompt_template),
            "instruction": cfg.get("instruction"),
            "answers": str(cfg.answers), "max_length": int(cfg.max_length), "max_new_tokens": int(cfg.max_new_tokens)}
    return Task(str(cfg.task_name), "generation", [], train, validation, test, empty, meta)
