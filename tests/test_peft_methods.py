"""peft methods by configuration: every peft YAML in the repo builds and trains, and a peft type that is
not in the repo is one YAML file in the classifier, few-shot and CLIP families (no code)."""
import pytest

from tunebench.core.record import iter_records
from tunebench.app.runner import run_cell

from .test_fewshot import TEXT, tiny_encoder_dir, wordnet_or_skip  # noqa: F401  (fixture)
from .test_runner import compose_cfg, records

SHORT = ["train.max_steps=2", "train.evals=1"]


@pytest.mark.parametrize("method, peft_type, options", [
    ("dora", "LORA", {"use_dora": True}), ("rslora", "LORA", {"use_rslora": True}), ("vera", "VERA", {}),
    ("adalora", "ADALORA", {}), ("loha", "LOHA", {}), ("oft", "OFT", {}),
])
def test_each_peft_yaml_builds_its_peft_type_and_trains(method, peft_type, options, tmp_path, monkeypatch, tiny_bert_dir):
    extra = ["method.peft.tinit=0", "method.peft.tfinal=0"] if method == "adalora" else []  # 2 steps only
    cfg = compose_cfg(tmp_path, monkeypatch, f"model.name={tiny_bert_dir}", f"method={method}", *SHORT, *extra)
    assert run_cell(cfg) == "ok", records(tmp_path)[0]["error"]
    [record] = records(tmp_path)
    peft = record["config"]["method"]["peft"]
    assert peft["peft_type"] == peft_type and all(peft[k] == v for k, v in options.items())
    cost = record["cost"]
    # The adapter and the classification head train; the 2-layer encoder's weights do not.
    assert 0 < cost["params_trainable"] < 0.5 * cost["params_total"]
    if method == "adalora":  # total_step: auto became the run's step count
        assert record["metrics"]["steps"] == 2


def test_an_unknown_peft_type_or_key_names_the_config_and_peft_types(tmp_path, monkeypatch, tiny_bert_dir):
    cfg = compose_cfg(tmp_path, monkeypatch, f"model.name={tiny_bert_dir}", "method=lora", "method.peft.peft_type=LORAX")
    assert run_cell(cfg) == "failed"
    message = records(tmp_path)[0]["error"]["message"]
    assert "method.peft.peft_type='LORAX': expected one of peft's types (" in message and "LOHA" in message
    cfg = compose_cfg(tmp_path / "b", monkeypatch, f"model.name={tiny_bert_dir}", "method=lora", "+method.peft.rank=4")
    assert run_cell(cfg) == "failed"
    message = records(tmp_path / "b")[0]["error"]["message"]
    assert message.startswith("method.peft (LORA): peft's LoraConfig rejected") and "rank" in message


# HRA (Householder reflection adaptation) is in peft but has no YAML in this repo.
NEW_YAMLS = {
    "hra": "defaults: [_peft, _self_]\nname: hra\nlr: 3.0e-3\nmodalities: [text]\n"
           "peft: {peft_type: HRA, r: 4, target_modules: [query, value]}\n",
    "fs_hra": "defaults: [_fewshot, _self_]\nname: fs_hra\nimpl: fs_encoder\nlr: 1.0e-3\nfinetune_steps: 2\n"
              "logit_scale: 10.0\nval_tasks: 2\npeft: {peft_type: HRA, r: 4, target_modules: [query, value]}\n",
    "clip_hra": "defaults: [_clip, _self_]\nname: clip_hra\nimpl: clip_peft\nlr: 1.0e-3\n"
                "peft: {peft_type: HRA, r: 4, target_modules: [query, value]}\n",
}


@pytest.fixture
def new_method_dir(tmp_path):
    folder = tmp_path / "myconf" / "method"
    folder.mkdir(parents=True)
    for name, text in NEW_YAMLS.items():
        (folder / f"{name}.yaml").write_text(text)
    return f"hydra.searchpath=[file://{tmp_path / 'myconf'}]"


def test_a_new_peft_type_is_one_yaml_for_the_classifier(tmp_path, monkeypatch, tiny_bert_dir, new_method_dir):
    cfg = compose_cfg(tmp_path, monkeypatch, f"model.name={tiny_bert_dir}", "method=hra", new_method_dir, *SHORT)
    assert run_cell(cfg) == "ok"
    [record] = records(tmp_path)
    assert record["cell"]["method"] == "hra" and 0 < record["cost"]["params_trainable"] < record["cost"]["params_total"]


def test_a_new_peft_type_is_one_yaml_for_few_shot(tmp_path, monkeypatch, tiny_encoder_dir, new_method_dir):  # noqa: F811
    wordnet_or_skip()
    cfg = compose_cfg(tmp_path, monkeypatch, f"model.name={tiny_encoder_dir}", "method=fs_hra", new_method_dir, *TEXT)
    assert run_cell(cfg) == "ok"
    [record] = records(tmp_path)
    assert record["metrics"]["meta_test_tasks"] == 12 and record["metrics"]["fewshot"]["method"] == "fs_hra"
    assert 0 < record["cost"]["params_trainable"] < record["cost"]["params_total"] / 5


def test_a_new_peft_type_is_one_yaml_for_clip(tmp_path, monkeypatch, new_method_dir):
    cfg = compose_cfg(tmp_path, monkeypatch, "data=digits_captions", "model=clip_effnet_minilm", "method=clip_hra",
                      new_method_dir, "train.max_steps=1", "train.evals=1", "threads=1")
    assert run_cell(cfg) == "ok"
    [record] = list(iter_records(tmp_path / "results" / "runs" / "t"))
    # HRA on the text tower's query / value projections (+ the logit scale): a small fraction of the CLIP.
    assert 0 < record["cost"]["params_trainable"] < 0.01 * record["cost"]["params_total"]
