"""The command line as a user meets it: errors that name what is wrong, --help that helps."""
import json
import re
import sys

import pandas as pd

from .conftest import IN_PROCESS, ROOT, run_tunebench


def test_unknown_method_lists_the_available_methods(tmp_path):
    out = run_tunebench(["run", "method=nosuch"], tmp_path)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "Could not find 'method/nosuch'" in text
    for name in ("full", "lora", "prefix", "ia3", "prompt"):
        assert f"\t{name}\n" in text


def test_missing_data_file_is_named(tmp_path):
    out = run_tunebench(["run", "data=files", "data.train=missing.csv", "logger=none"], tmp_path)
    assert out.returncode == 1
    assert "data.train: file 'missing.csv' does not exist" in out.stdout + out.stderr


def test_label_outside_declared_classes_names_the_row(tmp_path):
    rows = [{"text": f"sentence {i}", "label": ["neg", "pos"][i % 2]} for i in range(20)]
    rows[12]["label"] = "meh"
    pd.DataFrame(rows).to_csv(tmp_path / "bad.csv", index=False)
    out = run_tunebench(["run", "data=files", "data.train=bad.csv", "data.classes=[neg,pos]", "logger=none"], tmp_path)
    assert out.returncode == 1
    assert "bad.csv, row 13 (line 14): label 'meh' in column 'label' is not one of the declared classes" in out.stdout + out.stderr


def test_help_lists_commands_and_config_groups(tmp_path):
    out = run_tunebench(["--help"], tmp_path)
    assert out.returncode == 0
    assert all(f"\n  {c} " in out.stdout for c in ("run", "report", "claim", "status", "publish", "docs", "calibrate", "perf"))
    out = run_tunebench(["docs", "--check", "--repo", str(tmp_path)], tmp_path)  # an empty folder: nothing to refill
    assert out.returncode == 0, out.stdout + out.stderr
    out = run_tunebench(["claim", str(tmp_path), "--adjust", "sidak"], tmp_path)
    assert out.returncode == 2 and "invalid choice: 'sidak'" in out.stderr
    out = run_tunebench(["run", "--help"], tmp_path)
    assert out.returncode == 0
    # The shared-defaults files (_peft, ...) are not options and are not listed.
    group_lines = [line for line in out.stdout.splitlines() if re.match(r"^\w+: ", line)]
    assert group_lines and not [o for line in group_lines for o in line.split(": ", 1)[1].split(", ") if o.startswith("_")]
    assert ("method: adalora, cl_ewc, cl_joint, cl_lora, cl_lwf, cl_naive, cl_replay, "
            "clip_full, clip_lock_image, clip_lock_text, clip_lora, clip_probe, clip_wiseft, dora, fomaml, fs_finetune, "
            "fs_full, fs_lora, fs_probe, full, ia3, loha, lora, maml, oft, prefix, prompt, qlora, rslora, sk_decision_tree, "
            "sk_extra_tree, sk_gaussian_nb, sk_knn, sk_linear_svc, sk_passive_aggressive, sk_perceptron, sk_random_forest, "
            "sk_sgd, vera") in out.stdout
    assert ("experiment: causal_lr_grid, causal_quick, clip_twemoji, continual, continual_text, digits_sklearn, "
            "fashion_sklearn, federated_dp, federated_fashion, federated_quick, federated_text, fewshot_digits, fewshot_text, "
            "lora_paper_sst2, lr_grid, paper_roberta, peft_method_comparison, quick, quick_peft, refine_fashion, "
            "refine_text") in out.stdout
    assert "partition: dirichlet_0.1, dirichlet_1, iid" in out.stdout
    assert ("model: clip_effnet_minilm, deberta_v2_xxlarge_config, efficientnet_lite0, gpt2_large_config, gpt2_medium_config, "
            "gpt3_175b_config, hf, llama32_3b_config, minilm, mt0_large_config, pixels, roberta_base_random, "
            "roberta_large_config, small_cnn, smollm2, t0_3b_config") in out.stdout


def test_python_m_multirun_from_the_project_root_finds_huggingface_datasets_and_counts_cells(tmp_path, tiny_bert_dir):
    """`python -m` puts the project root (with its datasets/ folder) on sys.path, and Hydra's plugin scan also
    finds hydra_plugins/ in the working tree: `data=hf` must still load with HuggingFace's datasets, and the sweep
    summary and the exit code must still see every launched cell (one counted, one failing)."""
    import os
    import subprocess

    folder = tmp_path / "local_ds"
    folder.mkdir()
    pd.DataFrame({"text": [f"s {i}" for i in range(30)], "label": [i % 2 for i in range(30)]}).to_csv(folder / "train.csv", index=False)
    env = {**os.environ, "TUNEBENCH_RESULTS": str(tmp_path / "results")}
    out = subprocess.run(
        [sys.executable, "-m", "tunebench.app.run", "-m", "data=hf", f"data.path={folder}", f"model.name={tiny_bert_dir}",
         "method=lora", "method.impl=peft,nosuch", "count_only=true", "logger=none", IN_PROCESS, "sweep=fromroot"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 1, log[-2000:]
    assert "sweep 'fromroot': 2 cells: 1 ok, 1 failed" in log, log[-2000:]
    records = [json.loads(f.read_text()) for f in (tmp_path / "results" / "runs" / "fromroot").glob("*.json")]
    errors = [r["error"]["message"] for r in records if r["status"] == "failed"]
    assert len(errors) == 1 and "nosuch" in errors[0], errors
