"""The shared training engine: accumulation, precision, compile, checkpointing, hooks, resume, and the settings check."""
import os
import random
import signal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tunebench.core.checkpoint import RunCheckpoint
from tunebench.core.engine import Diverged, Engine, Hook, TrainJob, TrainSettings, batch_order
from tunebench.core.meter import CostMeter


class ToyJob(TrainJob):
    """A small classifier with dropout and a Python-random loss weight: resume must restore both RNGs."""

    name = "toy"

    def __init__(self, seed: int = 0, batch_size: int = 32, dropout: float = 0.0, jitter: bool = False, lr: float = 0.1):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(128, 8, generator=g)
        self.y = (self.x[:, 0] + 0.3 * self.x[:, 1] > 0).long()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=lr, momentum=0.9)
        self.batches = batch_order(len(self.y), batch_size, 4, seed)
        self.jitter, self.logit_dtypes = jitter, []

    def batch(self, step):
        return self.batches[step - 1]

    def loss(self, micro):
        idx = torch.as_tensor(micro)
        logits = self.net(self.x[idx])
        self.logit_dtypes.append(logits.dtype)
        weight = 1.0 + (random.random() if self.jitter else 0.0)
        return weight * F.cross_entropy(logits.float(), self.y[idx]), len(idx)

    def evaluate(self):
        with torch.no_grad():
            self.net.eval()
            return {"val_acc": float((self.net(self.x).argmax(-1) == self.y).float().mean())}


def run(job, steps=4, meter=None, **train) -> Engine:
    engine = Engine(job, steps, TrainSettings.from_config({"evals": 2, **train}), meter or CostMeter("cpu"), lr=0.1)
    engine.outcome = engine.run()
    return engine


def weights(job):
    return [p.detach().clone() for p in job.net.parameters()]


def test_accumulating_4_micro_batches_of_8_gives_the_update_of_one_batch_of_32():
    whole, accumulated = ToyJob(), ToyJob()
    run(whole, steps=3, grad_clip=None)
    run(accumulated, steps=3, grad_clip=None, grad_accum_steps=4)
    assert len(accumulated.logit_dtypes) == 4 * len(whole.logit_dtypes) == 12  # 4 forward passes per step
    for a, b in zip(weights(whole), weights(accumulated)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    different = ToyJob(batch_size=8)
    run(different, steps=3, grad_clip=None)
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(weights(whole), weights(different)))


def test_bf16_autocasts_training_and_evaluation_on_cpu_and_is_recorded(caplog):
    job = ToyJob()
    with caplog.at_level("WARNING", logger="tunebench"):
        engine = run(job, precision="bf16")
    assert set(job.logit_dtypes) == {torch.bfloat16}
    assert engine.prepared["precision"] == "bf16" and engine.outcome.best_val > 0.5
    # whether this CPU runs bf16 natively is recorded (step times are not comparable across the two) and, when
    # it does not, said
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert engine.prepared["cpu_bf16_native"] is native
    assert ("without native bf16" in caplog.text) is (not native)
    fp32 = ToyJob()
    run(fp32)
    assert set(fp32.logit_dtypes) == {torch.float32}


def test_fp16_uses_a_grad_scaler_and_still_learns():
    job = ToyJob()
    before = job.evaluate()["val_acc"]
    engine = run(job, steps=8, precision="fp16")
    assert engine.scaler is not None and set(job.logit_dtypes) == {torch.float16}
    assert all(torch.isfinite(w).all() for w in weights(job))
    assert engine.outcome.best_val > before


def test_compile_goes_through_torch_compile_and_trains_the_same_weights():
    plain, compiled = ToyJob(), ToyJob()
    run(plain, grad_clip=None)
    engine = run(compiled, grad_clip=None, compile="eager")
    assert engine.prepared["compile"] == "eager" and compiled.net._compiled_call_impl is not None
    for a, b in zip(weights(plain), weights(compiled)):
        torch.testing.assert_close(a, b)


def test_a_non_finite_loss_names_the_step_and_lr():
    job = ToyJob(lr=1e30)
    job.x = job.x * float("inf")
    with pytest.raises(Diverged, match=r"non-finite training loss nan at step 1 \(lr=0.1\)"):
        run(job)


def test_hooks_see_every_step_evaluation_and_epoch():
    class Recorder(Hook):
        def __init__(self):
            self.events = []

        def before_step(self, engine, step):
            self.events.append(("before", step))

        def after_step(self, engine, step, loss):
            self.events.append(("after", step))

        def after_eval(self, engine, point):
            self.events.append(("eval", point["step"]))

        def after_epoch(self, engine, epoch):
            self.events.append(("epoch", epoch))

    recorder = Recorder()
    engine = Engine(ToyJob(), 4, TrainSettings.from_config({"evals": 2}), CostMeter("cpu"), hooks=[recorder], steps_per_epoch=2)
    outcome = engine.run()
    assert recorder.events == [("before", 1), ("after", 1), ("before", 2), ("after", 2), ("eval", 2), ("epoch", 1),
                               ("before", 3), ("after", 3), ("before", 4), ("after", 4), ("eval", 4), ("epoch", 2)]
    assert [p["step"] for p in outcome.curve] == [2, 4] and outcome.best_step in (2, 4)


class Requeued(BaseException):
    """What submitit's handler does after requeueing: leave the process."""


def test_a_preempted_job_resumes_to_the_same_weights_with_dropout_and_python_rng(tmp_path):
    reference = ToyJob(dropout=0.3, jitter=True)
    random.seed(5)
    uninterrupted = run(reference, steps=6, meter=CostMeter("cpu"))

    class PreemptAt3(Hook):
        def after_step(self, engine, step, loss):
            if step == 3:
                os.kill(os.getpid(), signal.SIGUSR1)

    def launcher_handler(signum, frame):
        raise Requeued()

    checkpoint = RunCheckpoint(tmp_path / "train.pt", 0)
    settings = TrainSettings.from_config({"evals": 2})
    previous = signal.signal(signal.SIGUSR1, launcher_handler)
    try:
        random.seed(5)
        with pytest.raises(Requeued):
            Engine(ToyJob(dropout=0.3, jitter=True), 6, settings, CostMeter("cpu"), checkpoint=checkpoint,
                   hooks=[PreemptAt3()]).run()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert checkpoint.path.exists()
    random.seed(99)  # a requeued job starts with other RNG states; the checkpoint restores them
    torch.manual_seed(99)
    resumed_job = ToyJob(dropout=0.3, jitter=True)
    meter = CostMeter("cpu")
    outcome = Engine(resumed_job, 6, settings, meter, checkpoint=checkpoint).run()
    assert outcome.resumed_from_step == 3 and meter.train_samples == 6 * 32
    for a, b in zip(weights(reference), weights(resumed_job)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [p["val_acc"] for p in outcome.curve] == [p["val_acc"] for p in uninterrupted.outcome.curve]


@pytest.mark.parametrize("train, message", [
    ({"batch_size": 0}, r"train.batch_size=0: expected a whole number >= 1"),
    ({"grad_accum_steps": "two"}, r"train.grad_accum_steps='two': expected a whole number >= 1"),
    ({"precision": "fp8"}, r"train.precision='fp8': expected fp32 \| bf16 \| fp16"),
    ({"grad_clip": -1}, r"train.grad_clip=-1: expected a positive number or null"),
    ({"lr_scale": "abc"}, r"train.lr_scale='abc': expected a positive number"),
    ({"grad_checkpointing": "yes"}, r"train.grad_checkpointing='yes': expected true or false"),
    ({"batchsize": 8}, r"train.batchsize: unknown key"),
])
def test_train_settings_name_the_key_and_what_it_expects(train, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings.from_config(train)


def test_train_defaults_live_only_in_the_config_yaml():
    """No train default written both in code and YAML: the dataclass has none, the YAML block supplies all."""
    import dataclasses
    from pathlib import Path

    from omegaconf import OmegaConf

    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(TrainSettings))
    yaml_block = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf" / "config.yaml").train)
    assert dataclasses.asdict(TrainSettings.from_config()) == yaml_block
    assert TrainSettings.from_config({"evals": 7}).evals == 7


def test_gradient_checkpointing_lowers_measured_peak_memory_on_the_default_model():
    """The default cell's model and method (MiniLM + LoRA), one step on 16 x 128 tokens, a fresh model each time:
    with LoRA the activations, not gradients or Adam state, set the peak."""
    from omegaconf import OmegaConf

    from tunebench.datasets import load
    from tunebench.core.configs import compose_group
    from tunebench.methods import method_for
    from tunebench.methods.classifier import ClassifierJob, TextCodec, make_optimizer
    from tunebench.core.models import build

    from .conftest import ROOT

    task = load(OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "data" / "rotten_tomatoes.yaml"),
                                {"train_size": 64, "validation_size": 32, "test_size": 32, "pool_size": 32}))
    lora = compose_group("method", "lora")
    peaks, modules = {}, {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build(OmegaConf.create({"name": "minilm"}), task)
        net = method_for(compose_group("method", "lora")).adapt(model.net, lora)
        codec = TextCodec(model.tokenizer, 128)
        train = codec.encode(task.train)
        train.input_ids = [(ids + [0] * 128)[:128] for ids in train.input_ids]  # every sentence 128 tokens long
        optimizer, scheduler = make_optimizer(net, lora, 1e-3, 1)
        job = ClassifierJob("lora", net, codec, train, None, [list(range(16))], optimizer, scheduler, 16)
        job.evaluates = False
        meter = CostMeter("cpu").start()
        engine = Engine(job, 1, TrainSettings.from_config({"grad_checkpointing": checkpointing}), meter)
        engine.run()
        meter.stop()
        peaks[checkpointing] = meter.summary()["peak_memory_mb"]
        modules[checkpointing] = engine.prepared.get("grad_checkpointing_module")
        del model, net, job, engine, optimizer
    assert modules == {False: None, True: "PeftModelForSequenceClassification"}
    print("peak MB without / with checkpointing:", peaks)
    assert peaks[True] < 0.7 * peaks[False], peaks


def test_gradient_checkpointing_refuses_a_model_without_it():
    job = ToyJob()
    with pytest.raises(ValueError, match=r"train.grad_checkpointing=true: Sequential has no module that supports"):
        run(job, grad_checkpointing=True)


def test_text_evaluation_runs_longest_first_and_returns_predictions_in_the_data_order():
    """Length-sorted evaluation batches pad less; the predictions must still line up with the labels."""
    from omegaconf import OmegaConf

    from tunebench.core.models import build
    from tunebench.datasets import load
    from tunebench.methods.classifier import TextCodec, predict

    from .conftest import ROOT

    task = load(OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "data" / "rotten_tomatoes.yaml"),
                                {"train_size": 32, "validation_size": 64, "test_size": 32, "pool_size": 32}))
    torch.manual_seed(0)
    model = build(OmegaConf.create({"name": "minilm"}), task)
    codec = TextCodec(model.tokenizer, 128)
    val = codec.encode(task.validation)
    lengths = [len(val.input_ids[i]) for i in codec.eval_order(val)]
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]
    one_by_one = []
    with torch.no_grad():
        model.net.eval()
        for i in range(len(val)):  # no padding at all: the reference
            one_by_one.append(int(model.net(**{"input_ids": torch.tensor([val.input_ids[i]])}).logits.argmax(-1)))
    assert 10 < sum(one_by_one) < len(one_by_one) - 10  # both classes predicted: a misplaced prediction would show
    assert predict(model.net, codec, val, 16).tolist() == one_by_one
