"""Image tasks through the same loop: digits with the small CNN, full fine-tuning and LoRA (peft on conv / linear)."""
import pytest
import torch
from omegaconf import OmegaConf

from tunebench.datasets import load
from tunebench.methods import METHODS
from tunebench.models import build
from tunebench.runner import run_cell

from .conftest import ROOT
from .test_runner import compose_cfg, records

DIGITS = ["data=digits", "model=small_cnn", "data.train_size=null", "data.validation_size=180", "data.test_size=360",
          "data.pool_size=360", "train.batch_size=32", "train.evals=3"]


def digits_task():
    return load(OmegaConf.load(ROOT / "conf" / "data" / "digits.yaml"))


def test_lora_on_the_cnn_adapts_every_conv_and_linear_layer_in_closed_form():
    task = digits_task()
    torch.manual_seed(0)
    model = build(OmegaConf.create({"name": "small-cnn"}), task)
    net = METHODS.get("lora")().adapt(model.net, OmegaConf.load(ROOT / "conf" / "method" / "lora.yaml"))
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    r = 8
    conv1 = r * 1 * 9 + 16 * r        # A: r x (in x 3 x 3), B: out x r (1x1)
    conv2 = r * 16 * 9 + 32 * r
    fc = r * 512 + 64 * r             # 32 channels x 4 x 4 after pooling -> 64
    head = 64 * 10 + 10               # the new head trains fully
    assert trainable == conv1 + conv2 + fc + head == 6866
    logits = net(pixel_values=torch.zeros(2, 1, 8, 8)).logits
    assert logits.shape == (2, 10)


@pytest.mark.parametrize("method, at_least", [("full", 0.85), ("lora", 0.5)])
def test_methods_learn_digits(tmp_path, monkeypatch, method, at_least):
    lr = {"full": "method.lr=3e-3", "lora": "method.lr=1e-2"}[method]
    cfg = compose_cfg(tmp_path, monkeypatch, *DIGITS, f"method={method}", lr, "train.epochs=5")
    assert run_cell(cfg) == "ok"
    [record] = records(tmp_path)
    assert record["task"]["modality"] == "image" and record["cost"]["saved_bytes"] > 0
    assert record["metrics"]["test_acc"] >= at_least, record["metrics"]["test_acc"]  # chance: 0.10


def test_text_only_methods_and_text_models_refuse_images_by_name(tmp_path, monkeypatch):
    assert run_cell(compose_cfg(tmp_path, monkeypatch, *DIGITS, "method=prefix")) == "failed"
    assert run_cell(compose_cfg(tmp_path, monkeypatch, "data=digits", "method=full", "sweep=t2")) == "failed"
    errors = {r["config"]["method"]["name"]: r["error"]["message"] for r in records(tmp_path)}
    assert errors["prefix"] == "method 'prefix' fine-tunes text tasks; data=digits has modality 'image'"
    from tunebench.record import iter_records

    [wrong_model] = list(iter_records(tmp_path / "results" / "runs" / "t2"))
    assert "model.name='minilm-l6' is not an image model" in wrong_model["error"]["message"]
    assert "model=small_cnn" in wrong_model["error"]["message"]
