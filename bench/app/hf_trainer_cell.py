"""The default LoRA cell written with HF `Trainer` + peft, for `tunebench perf --cell`.

Same task (Rotten Tomatoes with the run's subsample), model (packaged MiniLM), adapter (the
`conf/method/lora.yaml` peft config, through the same builder), optimiser (AdamW, lr, no weight decay),
linear schedule with the same warmup steps, gradient clipping at 1.0, batch 32, steps, evaluation
count and test prediction as `tunebench run method=lora`; what a researcher would write with the
Trainer instead of the harness. The Trainer gets the run's batch order (`batch_order` from the seed)
so both cells train on the same batches: with dynamic padding, another random order changes the
padded tokens of a short run by a few percent, which would swamp the comparison.
Not part of a run; a benchmark's reference.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


class Encoded:
    """Token ids and labels as a map-style dataset of dicts (what Trainer's collator pads)."""

    def __init__(self, tokenizer, split, max_length: int):
        self.ids = tokenizer(list(split.x), truncation=True, max_length=max_length)["input_ids"]
        self.labels = [int(y) for y in split.y]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def same_order_trainer(order: list[int]):
    """A Trainer subclass whose training sampler yields `order` (tunebench's batch order)."""
    from transformers import Trainer

    class SameOrderTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return order

    return SameOrderTrainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunebench.app.hf_trainer_cell", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--evals", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from transformers import DataCollatorWithPadding, TrainingArguments

    from tunebench.core.configs import compose_group
    from tunebench.datasets import load
    from tunebench.methods import method_for
    from tunebench.core.models import build
    from tunebench.app.runner import _quiet_libraries
    from tunebench.core.engine import batch_order
    from tunebench.core.seeding import seed_everything

    _quiet_libraries()
    seed_everything(args.seed)
    data_cfg = compose_group("data", "rotten_tomatoes", train_size=args.train_size)
    method_cfg = compose_group("method", "lora")
    task = load(data_cfg)
    model = build(compose_group("model", "minilm"), task)
    net = method_for(method_cfg).adapt(model.net, method_cfg)
    max_length = int(data_cfg.max_length)
    train, val, test = (Encoded(model.tokenizer, s, max_length) for s in (task.train, task.validation, task.test))

    def accuracy(prediction) -> dict:
        return {"acc": float(np.mean(np.argmax(prediction.predictions, -1) == prediction.label_ids))}

    training = TrainingArguments(
        output_dir=str(args.out), per_device_train_batch_size=32, per_device_eval_batch_size=128,
        max_steps=args.max_steps, learning_rate=float(method_cfg.lr), weight_decay=float(method_cfg.weight_decay),
        warmup_steps=int(float(method_cfg.warmup_ratio) * args.max_steps), lr_scheduler_type="linear",
        max_grad_norm=1.0, eval_strategy="steps", eval_steps=max(1, args.max_steps // args.evals),
        save_strategy="no", logging_strategy="no", report_to=[], dataloader_num_workers=0, use_cpu=True,
        seed=args.seed, disable_tqdm=True, optim="adamw_torch")
    epochs = -(-args.max_steps * 32 // len(train))
    order = [int(i) for batch in batch_order(len(train), 32, epochs, args.seed) for i in batch]
    trainer = same_order_trainer(order)(model=net, args=training, train_dataset=train, eval_dataset=val,
                      data_collator=DataCollatorWithPadding(model.tokenizer), compute_metrics=accuracy)
    trainer.train()
    test_acc = accuracy(trainer.predict(test))["acc"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps({"test_acc": test_acc, "seconds": time.perf_counter() - start}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
