"""Full fine-tuning: every parameter of the pretrained model is trained (the reference arm)."""
from . import METHODS
from .classifier import SequenceClassifierMethod


@METHODS.register("full")
class FullFineTuning(SequenceClassifierMethod):
    name = "full"
    modalities = ("text", "image")
