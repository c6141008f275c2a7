"""The causal-LM family: full fine-tuning and any peft method on a decoder, for generation tasks.

Same engine, data order, step count and evaluation schedule as the classifier family; what differs is
the job. Each example is `prompt_template.format(text=x)` followed by " " + target + EOS; the loss is on
the target tokens only (the prompt and the padding are masked with -100), batches are padded
dynamically (on the left, so the answers line up at the right edge and only their positions go through
the vocabulary projection). Validation and test decode greedily (`data.max_new_tokens`), scored by exact match of the
answer (`task.meta.answers`: the label word, or the GSM8K final number). Label tasks are also scored by
constrained choice: the class word whose tokens have the highest log-likelihood after the prompt.
Metrics: test_acc (= exact match), test_correct (per-example bits, for the paired claim),
test_choice_acc, test_loss / test_perplexity on the target tokens, generation and training tokens/s.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from tunebench.core import distributed as dp
from tunebench.core.engine import TrainJob
from tunebench.core.run_context import Result, RunContext
from tunebench.datasets.generation import exact_match, final_answer, normalise_answer

from .classifier import longest_first

log = logging.getLogger("tunebench")
IGNORE = -100  # label id the loss skips (transformers' convention)


@dataclass
class EncodedLM:
    prompts: list[list[int]]   # token ids of each formatted prompt
    targets: list[list[int]]   # token ids of " " + target + EOS
    texts: list[str]           # the target strings, for scoring

    def __len__(self) -> int:
        return len(self.prompts)


def answer_only_labels(prompt: list[int], target: list[int]) -> list[int]:
    """Labels for prompt + target: the prompt masked, so the loss is on the answer tokens only."""
    return [IGNORE] * len(prompt) + list(target)


class PromptCodec:
    """Tokenises prompt / target pairs and pads them on the left (answers, and generation, start at the right edge)."""

    def __init__(self, tokenizer, template: str, max_length: int):
        if "{text}" not in template:
            raise ValueError(f"data.prompt_template={template!r}: expected a {{text}} placeholder for the input")
        self.tokenizer, self.template, self.max_length = tokenizer, template, int(max_length)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def prompt_ids(self, text: str) -> list[int]:
        return self.tokenizer(self.template.format(text=text))["input_ids"]

    def target_ids(self, target: str) -> list[int]:
        return self.tokenizer(" " + str(target).strip(), add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    def encode(self, split) -> EncodedLM:
        prompts, targets = [], []
        for x, target in zip(split.x, split.targets):
            prompt, answer = self._fit(self.prompt_ids(x), self.target_ids(target))
            prompts.append(prompt)
            targets.append(answer)
        return EncodedLM(prompts, targets, [str(t) for t in split.targets])

    def _fit(self, prompt: list[int], answer: list[int]) -> tuple[list[int], list[int]]:
        """Within max_length: the prompt loses its start first; an answer is cut only beyond half the budget."""
        if len(prompt) + len(answer) > self.max_length:
            answer = answer[: max(self.max_length // 2, self.max_length - len(prompt))]
            prompt = prompt[-max(1, self.max_length - len(answer)):]
        return prompt, answer

    def train_batch(self, data: EncodedLM, indices, targets: list[list[int]] | None = None) -> dict:
        """Prompt + target rows, left-padded so that every answer ends at the right edge; labels on the
        target tokens only; position ids count from each row's first real token (as in generation)."""
        pairs = [(data.prompts[i], targets[k] if targets else data.targets[i]) for k, i in enumerate(indices)]
        width = max(len(p) + len(t) for p, t in pairs)
        ids = torch.full((len(pairs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
        for r, (prompt, target) in enumerate(pairs):
            n = len(prompt) + len(target)
            ids[r, width - n:], mask[r, width - n:] = torch.tensor(prompt + target), 1
            labels[r, width - n:] = torch.tensor(answer_only_labels(prompt, target))
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}

    def prompt_batch(self, data: EncodedLM, indices) -> dict:
        """Prompts only, left-padded: generation continues from every row's right end."""
        rows = [data.prompts[i] for i in indices]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row):], mask[r, width - len(row):] = torch.tensor(row), 1
        return {"input_ids": ids, "attention_mask": mask}

    def eval_order(self, data: EncodedLM) -> np.ndarray:
        return longest_first(data.prompts)


# -- evaluation -------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(net, codec: PromptCodec, data: EncodedLM, batch_size: int, max_new_tokens: int) -> tuple[list[str], int]:
    """Greedy completions in the data's order, and the number of tokens generated."""
    net.eval()
    texts, produced = np.full(len(data), "", dtype=object), np.zeros(len(data), dtype=np.int64)
    order = dp.eval_share(codec.eval_order(data))  # several ranks: each generates its share
    eos = codec.tokenizer.eos_token_id
    with dp.unsharded_root(net):  # FSDP: `generate` is not the root's forward, whose hook would gather its weights
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            batch = codec.prompt_batch(data, indices)
            tokens = net.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=codec.pad_id, eos_token_id=eos,
                                  synced_gpus=dp.current().mode == "fsdp")  # FSDP: every rank runs every decoding step
            new = tokens[:, batch["input_ids"].shape[1]:]
            produced[indices] = (((new != codec.pad_id) & (new != eos)).sum(-1) + (new == eos).any(-1)).cpu().numpy()
            for i, row in zip(indices, codec.tokenizer.batch_decode(new, skip_special_tokens=True)):
                texts[i] = row
    return list(dp.gather_values(texts, order)), int(dp.gather_values(produced, order).sum())  # per example: a repeated one counts once


def answer_logprobs(net, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each labelled token and the mask of labelled positions, computing the vocabulary
    projection only for the last positions, where the (right-aligned) answers are: a prompt's logits
    are never needed, and on a 49k-token vocabulary they would be a fifth of the model's compute."""
    labels = batch["labels"]
    answer_starts = (labels != IGNORE).float().argmax(-1)  # first labelled position of each row
    keep = int(labels.shape[1] - answer_starts.min()) + 1   # + the position that predicts it
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = net(**inputs, logits_to_keep=keep).logits[:, -keep:-1].float()
    targets = labels[:, -keep + 1:]
    picked = torch.gather(F.log_softmax(logits, -1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    mask = targets != IGNORE
    return picked * mask, mask


def answer_loss(net, batch: dict) -> torch.Tensor:
    """Mean next-token NLL over the answer tokens of the batch."""
    picked, mask = answer_logprobs(net, batch)
    return -picked.sum() / mask.sum().clamp(min=1)


@torch.no_grad()
def target_logprobs(net, codec: PromptCodec, data: EncodedLM, batch_size: int,
                    targets: list[list[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per example: summed log-probability of its target tokens (or of `targets`, the same for every
    example) after its prompt, and the number of those tokens."""
    net.eval()
    sums, counts = np.zeros(len(data)), np.zeros(len(data), dtype=np.int64)
    order = dp.eval_share(codec.eval_order(data))
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        picked, mask = answer_logprobs(net, codec.train_batch(data, indices, [targets[0]] * len(indices) if targets else None))
        sums[indices] = picked.sum(-1).cpu().numpy()
        counts[indices] = mask.sum(-1).cpu().numpy()
    return dp.gather_values(sums, order), dp.gather_values(counts, order)


def class_logprobs(net, codec: PromptCodec, data: EncodedLM, classes: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per example and class: summed log-probability of the class word (with EOS) after the prompt; and the
    number of tokens of each class word."""
    words = [codec.target_ids(c) for c in classes]
    scores = np.stack([target_logprobs(net, codec, data, batch_size, [word])[0] for word in words], axis=1)
    return scores, np.array([len(word) for word in words])


def constrained_choice(net, codec: PromptCodec, data: EncodedLM, classes: list[str], batch_size: int) -> np.ndarray:
    """The class whose word (with EOS) is most likely after each prompt."""
    return class_logprobs(net, codec, data, classes, batch_size)[0].argmax(1)


def score_test_split(net, codec: PromptCodec, test: EncodedLM, task, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Each test example's summed target log-probability and target length, and on a label task the constrained
    choice. A label task's target is its class word, so its log-probability is that class's choice score: one
    pass per class, not one more for the targets (a quarter of the evaluation of a two-class task)."""
    if str(task.meta.get("answers", "label")) != "label":
        return *target_logprobs(net, codec, test, batch_size), None
    scores, lengths = class_logprobs(net, codec, test, task.classes, batch_size)
    gold, words = np.asarray(task.test.y), [codec.target_ids(c) for c in task.classes]
    rows = np.arange(len(gold))
    if all(words[y] == target for y, target in zip(gold, test.targets)):
        return scores[rows, gold], lengths[gold], scores.argmax(1)
    return *target_logprobs(net, codec, test, batch_size), scores.argmax(1)  # targets that are not the class words


def exact_matches(predictions: list[str], data: EncodedLM, answers: str) -> np.ndarray:
    return np.array([exact_match(p, t, answers) for p, t in zip(predictions, data.texts)], dtype=bool)


def macro_f1_of_labels(predictions: list[str], targets: list[str], classes: list[str]) -> float:
    """Macro-F1 over the classes; a completion that is no class word counts as wrong for every class."""
    from sklearn.metrics import f1_score

    index = {normalise_answer(c): i for i, c in enumerate(classes)}
    y_true = [index.get(normalise_answer(t), -1) for t in targets]
    y_pred = [index.get(normalise_answer(p), -1) for p in predictions]
    return float(f1_score(y_true, y_pred, labels=list(range(len(classes))), average="macro", zero_division=0))


# -- training ----------------------------------------------------------------------------------------------
class CausalLMJob(TrainJob):
    """Answer-only next-token loss; validation = exact match of greedy completions."""

    distributed = True  # generation and scoring share the examples across ranks

    def __init__(self, name, net, codec, train, val, batches, optimizer, scheduler, eval_batch_size, max_new_tokens, answers):
        self.name, self.net, self.codec, self.train, self.val = name, net, codec, train, val
        self.batches, self.optimizer, self.scheduler = batches, optimizer, scheduler
        self.eval_batch_size, self.max_new_tokens, self.answers = eval_batch_size, max_new_tokens, answers

    def batch(self, step: int):
        return self.batches[step - 1]

    def loss(self, micro):
        return answer_loss(self.net, self.codec.train_batch(self.train, micro)), len(micro)

    def loss_units(self, items) -> float:
        """The loss is a mean over answer tokens: micro-batches and ranks are weighted by theirs."""
        return float(sum(len(self.train.targets[i]) for i in items))

    def evaluate(self) -> dict:
        predictions, _ = generate(self.net, self.codec, self.val, self.eval_batch_size, self.max_new_tokens)
        return {"val_acc": float(exact_matches(predictions, self.val, self.answers).mean())}


def train_tokens(data: EncodedLM, batches) -> int:
    """Prompt + target tokens of every training step (the same whether or not the run resumed)."""
    return int(sum(len(data.prompts[i]) + len(data.targets[i]) for batch in batches for i in batch))


def start_from_instruction(method, net, tokenizer, task) -> None:
    """`method.generation_init: instruction`: the method's learned prompt starts as the task's instruction
    (`data.instruction`), before the first step (a resumed run then loads its trained prompt over it)."""
    instruction = task.meta.get("instruction")
    if not instruction:
        raise ValueError(f"method.generation_init=instruction: data={task.name} has no instruction; set data.instruction "
                         f"to a sentence that describes the task, or method.generation_init=null")
    if dp.current().mode == "fsdp":
        raise ValueError("method.generation_init=instruction: not under train.distributed=fsdp (the initialiser runs "
                         "the unsharded model); use ddp, or generation_init=null")
    method.start_from_instruction(net, tokenizer, str(instruction))
    log.info("%s starts from the task's instruction: %r", method.name, str(instruction))


def fit_evaluate_causal(method, run: RunContext) -> Result:
    """Train `run.model` (a causal LM, adapted by `method`) on a generation task and score the test split."""
    from .classifier import make_optimizer, run_batches

    task, net, meter = run.task, run.model.net, run.meter
    answers, max_new_tokens = str(task.meta.get("answers", "label")), int(task.meta.get("max_new_tokens", 16))
    codec = PromptCodec(run.model.tokenizer, str(task.meta["prompt_template"]), int(task.meta.get("max_length", 256)))
    train, val, test = (codec.encode(s) for s in (task.train, task.validation, task.test))
    batches = run_batches(len(train), run.train, run.seed)
    if run.method.get("generation_init") == "instruction":
        start_from_instruction(method, net, run.model.tokenizer, task)
    method.before_training(net, len(batches))
    optimizer, scheduler = make_optimizer(net, run.method, run.lr, len(batches))
    job = CausalLMJob(method.name, net, codec, train, val, batches, optimizer, scheduler, run.train.eval_batch_size,
                      max_new_tokens, answers)
    engine = run.engine(job, len(batches))
    outcome = engine.run()
    metrics = {}
    with meter.phase("eval"), run.autocast():
        started = time.perf_counter()
        predictions, produced = generate(net, codec, test, run.train.eval_batch_size, max_new_tokens)
        generation_seconds = time.perf_counter() - started
        logprob, counts, choice = score_test_split(net, codec, test, task, run.train.eval_batch_size)
        if choice is not None:
            metrics["test_choice_acc"] = float(np.mean(choice == task.test.y))
    correct = exact_matches(predictions, test, answers)
    loss = float(-logprob.sum() / max(1, counts.sum()))
    metrics.update(
        test_acc=float(correct.mean()),
        test_macro_f1=macro_f1_of_labels(predictions, test.texts, task.classes) if answers == "label" else None,
        test_loss=loss, test_perplexity=math.exp(min(loss, 50.0)),
        best_val_acc=outcome.best_val, best_step=outcome.best_step, steps=len(batches),
        test_correct="".join("1" if c else "0" for c in correct),
        majority_baseline_test_acc=task.majority_baseline(),
        generation_tokens_per_second=produced / generation_seconds if generation_seconds > 0 else None,
        train_tokens_per_second=train_tokens(train, batches) / meter.times["train"] if meter.times["train"] > 0 else None,
    )
    for p, t in list(zip(predictions, test.texts))[:2]:
        log.info("test example: generated %r, answer %r", p[:200], final_answer(t))
    method._measure_saved(net, meter)
    return Result(metrics, outcome.curve, outcome.resumed_from_step, engine.prepared)
