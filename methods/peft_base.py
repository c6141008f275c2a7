"""Shared part of the peft-backed methods: wrap the model with a peft config, save only the adapter."""
from peft import TaskType, get_peft_model

from .classifier import SequenceClassifierMethod


class PeftMethod(SequenceClassifierMethod):
    def peft_config(self, cfg):
        raise NotImplementedError

    def adapt(self, net, cfg):
        # task_type SEQ_CLS makes peft train the new classifier head too (modules_to_save).
        return get_peft_model(net, self.peft_config(cfg))

    @staticmethod
    def task_type():
        return TaskType.SEQ_CLS
