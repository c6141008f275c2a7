"""`synthetic` and `augmented`: generators, label-consistency filter, fidelity numbers, shared caches."""
import numpy as np
import pytest
from omegaconf import OmegaConf

from tunebench.datasets import load
from tunebench.datasets.refine import REFINEMENTS, RefineContext
from tunebench.datasets.refine.probe import c2st_accuracy, consistent, fit_probe
from tunebench.datasets.refine.text_generation import clean_generation, match_surface, postprocess

from .conftest import ROOT

CONF = ROOT / "conf"


def refine_cfg(name: str, **overrides):
    cfg = OmegaConf.load(CONF / "refine" / f"{name}.yaml")
    cfg.merge_with(OmegaConf.create(overrides))
    return cfg


def rotten_tomatoes(train_size: int):
    cfg = OmegaConf.load(CONF / "data" / "rotten_tomatoes.yaml")
    cfg.train_size = train_size
    return load(cfg)


def digits():
    return load(OmegaConf.load(CONF / "data" / "digits.yaml"))


# -- pieces -------------------------------------------------------------------------------------------

def test_generated_text_is_cleaned_and_brought_to_the_corpus_surface_form():
    assert clean_generation('Here\'s a paraphrase: "A delightful, witty movie."\nMore chatter') == "A delightful, witty movie."
    assert clean_generation("A **wicked , seductive** movie") == "A wicked , seductive movie"
    assert match_surface("The film isn't good, really.") == "the film isn't good , really ."
    real = ["the film is strictly routine .", "a gorgeous , witty , seductive movie ."]
    assert postprocess(["Too short", "A Fine, Warm Film."], real) == [None, "a fine , warm film ."]
    assert postprocess(["A Fine, Warm Film."], ["Mixed Case, Text."]) == ["A Fine, Warm Film."]  # not lower-cased corpora


def test_two_sample_test_is_chance_for_one_distribution_and_perfect_for_separated_ones():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 5)), rng.normal(size=(400, 5))
    assert abs(c2st_accuracy(a, b, seed=0) - 0.5) < 0.07
    assert c2st_accuracy(a, b + 3.0, seed=0) > 0.99


def test_label_filter_keeps_examples_the_real_data_classifier_assigns_to_their_class():
    x = np.array([[0.0], [0.1], [1.0], [1.1]] * 10)
    y = np.array([0, 0, 1, 1] * 10)
    probe = fit_probe(x, y)
    keep = consistent(probe, np.array([[0.0], [1.0], [0.05]]), np.array([0, 0, 0]), threshold=0.5)
    assert keep.tolist() == [True, False, True]


def test_generators_and_augmenters_are_checked_against_the_modality():
    task = digits()
    with pytest.raises(ValueError, match=r"refine.synthetic.generator='smollm2' works on text data; data=digits is an image task"):
        REFINEMENTS.get("synthetic")(task, refine_cfg("synthetic", generator="smollm2"), RefineContext(seed=0))
    with pytest.raises(ValueError, match=r"refine.augmented.augmenter='wordnet' works on text data.*\['sdedit', 'transforms'\]"):
        REFINEMENTS.get("augmented")(task, refine_cfg("augmented", augmenter="wordnet"), RefineContext(seed=0))
    with pytest.raises(KeyError, match="unknown augmenter 'mixup'"):
        REFINEMENTS.get("augmented")(task, refine_cfg("augmented", augmenter="mixup"), RefineContext(seed=0))
    with pytest.raises(ValueError, match=r"refine.synthetic.ratio=0.0: expected a positive number"):
        REFINEMENTS.get("synthetic")(task, refine_cfg("synthetic", ratio=0.0), RefineContext(seed=0))


# -- augmented ----------------------------------------------------------------------------------------

def test_wordnet_augmentation_adds_filtered_label_preserving_variants(tmp_path):
    task = rotten_tomatoes(120)
    ctx = RefineContext(seed=0, cache_dir=tmp_path / "cache")
    refined = REFINEMENTS.get("augmented")(task, refine_cfg("augmented", augmenter="wordnet", variants=2), ctx)
    report, train = refined.report, refined.task.train
    assert report["generated"] == 240 and report["augmented_examples"] == 120
    assert 0 < report["kept"] <= report["usable"] <= 240
    assert len(train) == 120 + report["kept"] and report["cache_built"] is True
    assert sum(report["kept_variants_per_example"].values()) == 120  # a histogram over the source examples
    assert sum(k * v for k, v in report["kept_variants_per_example"].items()) == report["kept"]
    source, variant = report["examples"][0]
    assert source != variant and len(source.split()) == len(variant.split())  # one word for one word
    new = dict(zip(train.x[120:], train.y[120:]))
    originals = dict(zip(task.train.x, task.train.y))
    for source, variant in report["examples"]:
        assert new[variant] == originals[source]  # the variant carries its source's label
    again = REFINEMENTS.get("augmented")(task, refine_cfg("augmented", augmenter="wordnet", variants=2), ctx)
    assert again.report["cache_built"] is False and again.task.train.x == train.x


def test_transforms_augmentation_on_digits_keeps_most_variants(tmp_path):
    task = digits()
    refined = REFINEMENTS.get("augmented")(task, refine_cfg("augmented", augmenter="transforms", max_examples=200),
                                           RefineContext(seed=0, cache_dir=tmp_path / "cache"))
    report = refined.report
    assert report["augmented_examples"] == 200 and report["generated"] == 200
    # Measured: 146 of 200 kept by the pixel classifier trained on the real digits (177 without the
    # geometric part; 85 with 10-degree rotations and 10% shifts, hence the defaults of 5 and 5%).
    assert report["kept"] >= 120, report["kept"]
    extra = np.stack(refined.task.train.x[len(task.train):])
    assert extra.shape[1:] == (8, 8) and extra.min() >= 0.0 and extra.max() <= 1.0
    assert refined.task.validation is task.validation and refined.task.test is task.test


# -- SmolLM2 (slow: converts the GGUF once, then generates) ---------------------------------------------

@pytest.mark.slow
def test_smollm2_synthetic_text_with_fidelity_report_and_a_shared_cache(tmp_path):
    task = rotten_tomatoes(80)
    ctx = RefineContext(seed=0, cache_dir=tmp_path / "cache")
    cfg = refine_cfg("synthetic", ratio=0.25)
    report = REFINEMENTS.get("synthetic")(task, cfg, ctx).report
    assert report["generator"] == "smollm2" and report["generator_cache_built"] is True
    assert report["generated"] >= 15 and 0 < report["kept"] <= report["generated"]  # 20 asked, some unusable
    fid = report["fidelity"]
    assert 0.4 <= fid["c2st_accuracy"] <= 1.0 and 0.0 <= fid["tstr_accuracy"] <= 1.0
    assert all(text == text.lower() for text in report["examples"])  # Rotten Tomatoes' surface form
    again = REFINEMENTS.get("augmented")(task, refine_cfg("augmented", max_examples=10), ctx).report
    assert again["augmenter"] == "paraphrase" and again["generator_cache_built"] is False  # one converted model
    assert again["generated"] == 10 and again["kept"] <= again["usable"] <= 10


# -- images: one diffusion model serves synthetic samples and SDEdit variations -------------------------

FAST_DIFFUSION = {"steps": 300, "sample_steps": 10}


def test_diffusion_synthetic_digits_then_sdedit_reuses_the_same_trained_model(tmp_path):
    task = digits()
    ctx = RefineContext(seed=0, cache_dir=tmp_path / "cache")
    refined = REFINEMENTS.get("synthetic")(task, refine_cfg("synthetic", generator="diffusion", ratio=0.5,
                                                            diffusion=FAST_DIFFUSION), ctx)
    report = refined.report
    assert report["generated"] == sum(round(0.5 * n) for n in task.train.class_counts(10))
    assert report["generator_cache_built"] is True and report["cache_built"] is True
    assert len(refined.task.train) == len(task.train) + report["kept"]
    fid = report["fidelity"]
    # Measured (300 training steps): kept 409 of 450, C2ST 0.84, TSTR 0.88 vs TRTR 0.97 on validation (chance 0.10);
    # with the default 1,500 steps: 445 kept, C2ST 0.66, TSTR 0.93; the GAN (defaults): 444, C2ST 0.59, TSTR 0.85.
    assert report["kept"] >= 0.8 * report["generated"], report["kept"]
    assert fid["tstr_accuracy"] >= 0.7 and fid["c2st_accuracy"] < 0.95, fid
    again = REFINEMENTS.get("synthetic")(task, refine_cfg("synthetic", generator="diffusion", ratio=0.5,
                                                          diffusion=FAST_DIFFUSION), ctx).report
    assert again["cache_built"] is False and again["generator_cache_built"] is False  # this run built nothing
    augmented = REFINEMENTS.get("augmented")(task, refine_cfg("augmented", max_examples=100, diffusion=FAST_DIFFUSION), ctx)
    assert augmented.report["augmenter"] == "sdedit" and augmented.report["generator_cache_built"] is False
    assert augmented.report["generator_cache_key"] == report["generator_cache_key"]
    # Measured: 100 of 100 SDEdit variants (strength 0.4) keep their label under the real-data classifier.
    assert augmented.report["kept"] >= 90, augmented.report["kept"]
