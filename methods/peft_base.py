"""Shared part of the peft-backed methods: wrap the model with a peft config, save only the adapter."""
import torch
from peft import TaskType, get_peft_model

from .classifier import SequenceClassifierMethod


def linear_module_names(net) -> list[str]:
    return sorted({name.split(".")[-1] for name, m in net.named_modules() if isinstance(m, torch.nn.Linear)})


class PeftMethod(SequenceClassifierMethod):
    def peft_config(self, cfg):
        raise NotImplementedError

    def adapt(self, net, cfg):
        # task_type SEQ_CLS makes peft train the new classifier head too (modules_to_save).
        targets = cfg.get("target_modules")
        return self.wrap(net, self.peft_config(cfg), list(targets) if targets else None)

    def wrap(self, net, config, targets):
        try:
            return get_peft_model(net, config)
        except ValueError as e:
            raise ValueError(
                f"method={self.name}: peft could not adapt {type(net).__name__} "
                f"(target modules {targets}); linear modules of this model "
                f"are named {linear_module_names(net)}. peft said: {e}"
            ) from e

    @staticmethod
    def task_type():
        return TaskType.SEQ_CLS
