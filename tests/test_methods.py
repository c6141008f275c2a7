"""Methods adapt the model as the papers describe: counts checked against closed-form numbers."""
import pytest
from omegaconf import OmegaConf

from tunebench.core.meter import parameter_counts
from tunebench.core.configs import compose_group
from tunebench.methods import method_for
from tunebench.core.engine import batch_order, eval_steps
from tunebench.core.models import build

from .test_tasks import CONF

HEAD = ("classifier",)


class TwoClassTask:
    classes = ["neg", "pos"]
    modality = "text"


def adapted_counts(model_cfg, method: str, **overrides):
    model = build(OmegaConf.create(model_cfg), TwoClassTask())
    cfg = compose_group("method", method, **overrides)
    net = method_for(cfg).adapt(model.net, cfg)
    return parameter_counts(net, HEAD)


def test_tiny_bert_counts_match_closed_form(tiny_bert_dir):
    cfg = {"name": str(tiny_bert_dir)}  # a local path: the same code path as a hub name
    hidden, layers, head = 32, 2, 32 * 2 + 2
    full = adapted_counts(cfg, "full")
    assert full["params_trainable"] == full["params_total"]
    lora = adapted_counts(cfg, "lora")  # r=8 on query and value: A (h x r) + B (r x h) each
    assert lora["params_trainable_excl_head"] == layers * 2 * (hidden * 8 + 8 * hidden)
    assert lora["params_trainable"] == lora["params_trainable_excl_head"] + head
    prefix = adapted_counts(cfg, "prefix")  # 10 virtual tokens x layers x (key, value) x hidden
    assert prefix["params_trainable_excl_head"] == 10 * layers * 2 * hidden
    prompt = adapted_counts(cfg, "prompt")  # 10 soft tokens at the input only
    assert prompt["params_trainable_excl_head"] == 10 * hidden
    ia3 = adapted_counts(cfg, "ia3")  # key, value (h each), attention output (h) and FFN output (intermediate)
    assert ia3["params_trainable_excl_head"] == layers * (hidden + hidden + hidden + 64)
    dora = adapted_counts(cfg, "dora")  # LoRA + one magnitude per output feature of each adapted layer
    assert dora["params_trainable_excl_head"] == lora["params_trainable_excl_head"] + layers * 2 * hidden
    rslora = adapted_counts(cfg, "rslora")  # the same matrices, another scaling
    assert rslora["params_trainable"] == lora["params_trainable"]
    loha = adapted_counts(cfg, "loha")  # two rank-r factor pairs per layer: 2 x (h x r + r x h)
    assert loha["params_trainable_excl_head"] == 2 * lora["params_trainable_excl_head"]


def test_roberta_base_paper_check_counts():
    """LoRA paper (Hu et al. 2021, Table 2): RoBERTa-base full 125.0M, LoRA 0.3M trainable."""
    model_cfg = OmegaConf.load(CONF.parent / "model" / "roberta_base_random.yaml")
    full = adapted_counts(model_cfg, "full")
    lora = adapted_counts(model_cfg, "lora")
    assert 124.5e6 < full["params_trainable"] < 125.5e6
    assert lora["params_trainable_excl_head"] == 12 * 2 * (768 * 8 + 8 * 768) == 294_912
    assert round(lora["params_trainable_excl_head"] / 1e6, 1) == 0.3


def test_data_order_and_eval_schedule_depend_only_on_seed_and_size():
    a = batch_order(100, 32, 2, seed=3)
    b = batch_order(100, 32, 2, seed=3)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert len(a) == 8 and sorted(sum((x.tolist() for x in a[:4]), [])) == list(range(100))
    assert [x.tolist() for x in batch_order(100, 32, 2, seed=4)] != [x.tolist() for x in a]
    assert eval_steps(63, 3) == {21, 42, 63}
    assert eval_steps(5, 10) == {1, 2, 3, 4, 5}


def test_unknown_target_module_fails_clearly(tiny_bert_dir):
    with pytest.raises(ValueError, match=r"method=lora: peft could not adapt .*linear modules of this model are named .*query"):
        adapted_counts({"name": str(tiny_bert_dir)}, "lora", peft={"target_modules": ["nosuch"]})
