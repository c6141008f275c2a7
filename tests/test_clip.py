"""CLIP fine-tuning (open_clip): the packaged two-tower CLIP, contrastive alignment (refine=ssl), zero-shot
accuracy well above chance, WiSE-FT's alpha = 0 end, LoRA / locked towers / probe, retrieval recall, report
columns, the clip_lora vs clip_full claim, and the cluster path (an open_clip config + a local checkpoint)."""
import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from tunebench.app.claim import check
from tunebench.app.frame import load_frame
from tunebench.core.record import iter_records
from tunebench.app.report import write_report
from tunebench.app.runner import run_cell

from .conftest import ROOT

# digits as image-caption pairs ("a photo of a handwritten seven."), the packaged EfficientNet-Lite0 + MiniLM
# CLIP, projections aligned on the 897 training pairs (50 steps), 3 contrastive steps of fine-tuning.
DIGITS = ["data=digits_captions", "model=clip_effnet_minilm", "refine=ssl", "train.max_steps=3", "train.batch_size=32",
          "train.evals=1", "threads=1", "sweep=c"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("clip-results")


def compose_in(results, monkeypatch, *overrides):
    monkeypatch.setenv("TUNEBENCH_RESULTS", str(results))
    with initialize_config_module("tunebench.conf", version_base="1.3"):
        return compose("config", overrides=[*DIGITS, *overrides])


def run(results, monkeypatch, *overrides) -> dict:
    cfg = compose_in(results, monkeypatch, *overrides)
    status = run_cell(cfg)
    records = sorted(iter_records(results / "runs" / "c"), key=lambda r: r["finished_at"])
    record = records[-1]
    assert status == "ok", record.get("error")
    return record


@pytest.mark.slow
def test_zero_shot_after_alignment_is_far_above_chance_and_wiseft_alpha_0_is_the_zero_shot_model(results, monkeypatch):
    record = run(results, monkeypatch, "method=clip_wiseft", "method.alphas=[0.0,0.5,1.0]")
    m, [alignment] = record["metrics"], record["refinements"]
    assert alignment["method"] == "clip-alignment" and alignment["pairs"] == "train" and alignment["steps"] == 50
    assert alignment["last_loss"] < alignment["first_loss"]
    # Measured: zero-shot accuracy of the aligned CLIP on the 360 test digits 0.933 (chance 0.1; Fashion-MNIST's
    # 2,000 test images: 0.823); recall text->image@1 1.0 (10 distinct captions, each with 36 images).
    assert m["zero_shot_acc_start"] > 0.6
    assert m["recall_t2i_1_start"] > 0.6 and m["recall_i2t_5_start"] > 0.9
    curve = {point["alpha"]: point for point in m["wiseft_curve"]}
    assert curve[0.0]["test_acc"] == m["zero_shot_acc_start"]  # exactly: torch.lerp at 0 returns the zero-shot weights
    assert curve[0.0]["recall_i2t_1"] == m["recall_i2t_1_start"] and curve[0.0]["recall_t2i_5"] == m["recall_t2i_5_start"]
    assert m["wiseft_alpha"] in curve and m["test_acc"] == curve[m["wiseft_alpha"]]["test_acc"]
    assert m["best_val_acc"] == max(point["val_acc"] for point in curve.values())
    assert m["test_acc"] == pytest.approx(m["test_correct"].count("1") / 360)


def test_wiseft_interpolation_is_exact_at_both_ends():
    from tunebench.methods.clip import interpolate

    zero_shot = {"w": torch.randn(5, 3), "steps": torch.tensor(3)}
    tuned = {"w": torch.randn(5, 3), "steps": torch.tensor(9)}
    assert torch.equal(interpolate(zero_shot, tuned, 0.0)["w"], zero_shot["w"])
    assert torch.equal(interpolate(zero_shot, tuned, 1.0)["w"], tuned["w"])
    assert torch.allclose(interpolate(zero_shot, tuned, 0.25)["w"], 0.75 * zero_shot["w"] + 0.25 * tuned["w"])
    assert int(interpolate(zero_shot, tuned, 0.25)["steps"]) == 3 and int(interpolate(zero_shot, tuned, 0.75)["steps"]) == 9


def trained_weights_changed(method: str, overrides=()) -> dict:
    """{parameter-name prefix: changed?} after a few fine-tuning steps, at the module level."""
    from tunebench.core.configs import compose_group
    from tunebench.datasets import load
    from tunebench.core.engine import TrainSettings
    from tunebench.core.meter import CostMeter
    from tunebench.methods import method_for
    from tunebench.core.models import build
    from tunebench.core.run_context import RunContext

    task = load(OmegaConf.load(ROOT / "conf" / "data" / "digits_captions.yaml"))
    m_cfg = compose_group("method", method, **dict(overrides))
    train = TrainSettings.from_config({"epochs": 1, "batch_size": 16, "max_steps": 2, "evals": 1, "select_best": False})
    torch.manual_seed(0)
    model = build(OmegaConf.load(ROOT / "conf" / "model" / "clip_effnet_minilm.yaml"), task)
    method = method_for(m_cfg)
    model.net = method.adapt(model.net, m_cfg)
    before = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
    meter = CostMeter("cpu").start()
    meter.count_params(model.net)
    method.fit_evaluate(RunContext(method=m_cfg, train=train, seed=0, task=task, model=model, meter=meter))
    meter.stop()
    after = model.net.state_dict()
    prefixes = ("visual.trunk.", "visual.head.", "text.transformer.", "text.proj.", "logit_scale")
    changed = {p: any(not torch.equal(before[k], after[k]) for k in before if k.startswith(p) and "lora_" not in k)
               for p in prefixes}
    changed["lora"] = any(not torch.equal(before[k], after[k]) for k in before if "lora_B" in k)
    changed["bn_stats"] = any(not torch.equal(before[k], after[k]) for k in before if k.endswith("running_mean"))
    return {"changed": changed, "cost": meter.summary()}


def test_locked_towers_and_lora_train_only_what_they_say():
    lock_image = trained_weights_changed("clip_lock_image")["changed"]
    assert not lock_image["visual.trunk."] and lock_image["text.transformer."] and lock_image["visual.head."]
    lock_text = trained_weights_changed("clip_lock_text")["changed"]
    assert lock_text["visual.trunk."] and not lock_text["text.transformer."] and lock_text["text.proj."]
    lora = trained_weights_changed("clip_lora")
    c = lora["changed"]
    assert c["lora"] and c["logit_scale"] and not any(c[p] for p in ("visual.trunk.", "visual.head.", "text.transformer.", "text.proj."))
    assert not c["bn_stats"]  # BatchNorm statistics stay ImageNet's in every mode
    # LoRA r=8 on query/value (6 layers) and the 16 pointwise projection convs: 159,488 weights + the logit scale
    assert lora["cost"]["params_trainable"] == 159_489 and lora["cost"]["trainable_pct"] < 1.0


@pytest.mark.slow
def test_lora_and_full_runs_pair_in_the_claim_and_the_report_shows_zero_shot_and_recall(results, monkeypatch):
    for seed in (0, 1):
        for method in ("clip_full", "clip_lora"):
            run(results, monkeypatch, f"method={method}", f"seed={seed}")
    probe = run(results, monkeypatch, "method=clip_probe")
    assert probe["metrics"]["test_metric"] == "probe_acc" and probe["cost"]["params_trainable"] == 10 * 257
    assert probe["metrics"]["zero_shot_acc"] == probe["metrics"]["zero_shot_acc_start"]  # the probe leaves the CLIP alone
    frame = load_frame(results / "runs" / "c")
    comparisons = [c for c in check(frame)
                   if c["peft"] == "clip_lora"]
    [entry] = comparisons
    assert entry["reference"] == "clip_full" and entry["seeds"] == [0, 1]
    parts = {p["part"].split(" (")[0]: p for p in entry["parts"]}
    assert parts["trainable params"]["verdict"] == "supported" and "360 shared test examples" in parts["accuracy"]["note"]
    markdown = write_report(results / "runs" / "c")["markdown"]
    header = markdown.splitlines()[0]
    for column in ("zero-shot acc", "i→t R@1", "i→t R@5", "t→i R@1", "t→i R@5"):
        assert column in header


@pytest.mark.slow
def test_image_text_tasks_refuse_other_refinements_and_other_methods_refuse_pairs(results, monkeypatch):
    cfg = compose_in(results, monkeypatch, "method=clip_full", "refine=validated")
    assert run_cell(cfg) == "failed"
    errors = [r["error"]["message"] for r in iter_records(results / "runs" / "c") if r["status"] == "failed"]
    assert any("refine=validated works on image/text tasks; data=digits_captions is an image-text task "
               "(use refine=none or refine=ssl)" in e for e in errors)
    cfg = compose_in(results, monkeypatch, "method=lora", "refine=none")
    assert run_cell(cfg) == "failed"
    errors = [r["error"]["message"] for r in iter_records(results / "runs" / "c") if r["status"] == "failed"]
    assert any("method 'lora' fine-tunes text/image tasks; data=digits_captions has modality 'image-text'" in e for e in errors)


def test_an_open_clip_config_and_a_local_checkpoint_load_through_the_cluster_code_path(tmp_path):
    """`model.name=<open_clip model> model.pretrained=<tag or file>`: here a tiny ViT config (model.config_dir)
    and a checkpoint file written by this test, so no download; the weights must come back exactly."""
    import open_clip

    from tunebench.core.clip_models import build_clip, embed_texts

    spec = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    (tmp_path / "tunebench-tiny-vit.json").write_text(json.dumps(spec))
    open_clip.add_model_config(tmp_path)
    torch.manual_seed(1)
    reference = open_clip.create_model("tunebench-tiny-vit")
    torch.save(reference.state_dict(), tmp_path / "tiny.pt")
    cfg = OmegaConf.create({"name": "tunebench-tiny-vit", "pretrained": str(tmp_path / "tiny.pt"), "config_dir": str(tmp_path)})
    model = build_clip(cfg, task=None)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key
    assert model.image_size == 32 and model.source == f"open_clip:tunebench-tiny-vit:{tmp_path / 'tiny.pt'}"
    assert embed_texts(model, ["a photo of a cat."]).shape == (1, 32)
    with pytest.raises(ValueError, match="model.name='no-such-clip' is neither a packaged CLIP"):
        build_clip(OmegaConf.create({"name": "no-such-clip"}), task=None)


def test_pairs_without_classes_score_retrieval(tmp_path, monkeypatch):
    """A local CSV of image paths and captions (open_clip's format) without a label column: no zero-shot
    classification, so test_acc is image->text recall@1 and the record says so."""
    from .test_pairs import ROWS, write_pairs

    path = write_pairs(tmp_path, ROWS)
    record = run(tmp_path / "results", monkeypatch, "data=pairs_csv", f"data.path={path}", "refine=none", "method=clip_lora",
                 "train.max_steps=2")
    m = record["metrics"]
    assert m["test_metric"] == "recall_i2t_1" and m["test_acc"] == m["recall_i2t_1"] and m["zero_shot_acc"] is None
    assert m["test_correct"] is None and 0.0 <= m["best_val_acc"] <= 1.0 and m["majority_baseline_test_acc"] is None


def test_recall_counts_captions_the_model_cannot_tell_apart_as_one_text():
    from tunebench.core.clip_models import retrieval_recall

    images = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0.8, 0, 0, 0.6]])
    texts = {"a cat": torch.tensor([1.0, 0, 0, 0]), "a dog": torch.tensor([0, 1.0, 0, 0]), "a bird": torch.tensor([0, 0, 1.0, 0])}

    def text_emb_of(captions):
        return torch.stack([texts[c.lower()] for c in captions])

    # images 0 and 3 share the caption "a cat": one text with two positives, nothing misses
    assert retrieval_recall(images, ["a cat", "a dog", "a bird", "a cat"], text_emb_of, ks=(1,)) == \
        {"recall_i2t_1": 1.0, "recall_t2i_1": 1.0}
    # "A cat" embeds exactly like "a cat": as two strings they tie and one of the pair misses each way ...
    apart = retrieval_recall(images, ["a cat", "a dog", "a bird", "A cat"], text_emb_of, ks=(1,))
    assert apart == {"recall_i2t_1": 0.75, "recall_t2i_1": 0.75}
    # ... with key_of (the tokenizer's ids, as the CLIP methods pass it) they are one text again
    together = retrieval_recall(images, ["a cat", "a dog", "a bird", "A cat"], text_emb_of, ks=(1,),
                                key_of=lambda captions: [c.lower() for c in captions])
    assert together == {"recall_i2t_1": 1.0, "recall_t2i_1": 1.0}


def test_locked_towers_keep_their_projection_trainable_on_open_clip_models_too(tmp_path):
    import open_clip

    from tunebench.core.configs import compose_group
    from tunebench.methods import method_for

    lock_image, lock_text = compose_group("method", "clip_lock_image"), compose_group("method", "clip_lock_text")

    spec = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
            "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "tunebench-tiny-lock.json").write_text(json.dumps(spec))
    open_clip.add_model_config(tmp_path)
    net = method_for(lock_image).adapt(open_clip.create_model("tunebench-tiny-lock"), lock_image)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert "visual.proj" in trainable and "visual.conv1.weight" not in trainable and "text_projection" in trainable
    net = method_for(lock_text).adapt(open_clip.create_model("tunebench-tiny-lock"), lock_text)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert "text_projection" in trainable and "token_embedding.weight" not in trainable and "visual.conv1.weight" in trainable
