"""QLoRA (Dettmers et al. 2023): the frozen base's linear layers in 4-bit NF4 (bitsandbytes), LoRA on top.

bitsandbytes quantises on a CUDA device; where it cannot run (no CUDA, or the package missing) the
method refuses before any work and says what is missing. The adapter itself is the `peft` node, as for
every peft method (conf/method/qlora.yaml).
"""
from __future__ import annotations

import importlib.util

import torch

from . import METHODS
from .peft_method import PeftMethod


def qlora_unavailable() -> str | None:
    """What this machine lacks for 4-bit training, or None."""
    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (bitsandbytes' 4-bit kernels run on CUDA)")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install bitsandbytes)")
    return " and ".join(missing) or None


def quantise_linear_layers(net, compute_dtype=torch.bfloat16, skip: tuple[str, ...] = ("lm_head", "score", "classifier")):
    """Replace every frozen nn.Linear (but the output head) with a bitsandbytes NF4 Linear4bit on CUDA."""
    import bitsandbytes as bnb

    for name, module in list(net.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, torch.nn.Linear) or child_name in skip:
                continue
            quantised = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                          compute_dtype=compute_dtype, quant_type="nf4")
            quantised.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                quantised.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(module, child_name, quantised.cuda())  # moving to CUDA is what quantises
    return net


@METHODS.register("qlora")
class QLoRA(PeftMethod):
    name = "qlora"
    modalities = ("text",)

    def adapt(self, net, method_cfg):
        missing = qlora_unavailable()
        if missing:
            raise RuntimeError(f"method=qlora needs {missing}; this machine has neither path to 4-bit weights. "
                               f"Run it on a CUDA node (launcher=slurm_gpu), or use method=lora here")
        from peft import prepare_model_for_kbit_training

        net = prepare_model_for_kbit_training(quantise_linear_layers(net.cuda()))
        return super().adapt(net, method_cfg)
