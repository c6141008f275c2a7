"""The causal-LM family: answer-only loss, the exact-match scorer, constrained choice, the synthetic
arithmetic task, parameter counts of a published decoder config, and one tiny run through the CLI."""
import copy
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tunebench.datasets.generation import exact_match, final_answer, normalise_answer

from .conftest import run_tunebench


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval(), AutoTokenizer.from_pretrained(tiny_llama_dir)


def encoded(tokenizer, prompts, targets, max_length=64):
    from tunebench.datasets.task import Split
    from tunebench.methods.causal_lm import PromptCodec

    codec = PromptCodec(tokenizer, "question: {text} answer:", max_length)
    split = Split(list(prompts), np.full(len(prompts), -1), targets=list(targets))
    return codec, codec.encode(split)


def test_the_loss_is_on_the_answer_tokens_only(tiny):
    from tunebench.methods.causal_lm import answer_loss

    net, tokenizer = tiny
    codec, data = encoded(tokenizer, ["two plus two", "a much longer question about seven and eight"], ["4", "fifteen in all"])
    batch = codec.train_batch(data, [0, 1])
    width = batch["input_ids"].shape[1]
    for row, i in enumerate([0, 1]):
        n_prompt, n_target = len(data.prompts[i]), len(data.targets[i])
        labels = batch["labels"][row].tolist()
        pad = width - n_prompt - n_target
        assert labels[:pad + n_prompt] == [-100] * (pad + n_prompt)  # the padding and the prompt are masked
        assert labels[pad + n_prompt:] == data.targets[i]  # the answer and EOS are learned
        assert batch["position_ids"][row, pad:].tolist() == list(range(n_prompt + n_target))
    assert data.targets[0][-1] == tokenizer.eos_token_id
    # The loss is the mean next-token NLL over exactly those tokens, as the model computes it on each
    # example alone (no padding) with full logits.
    nll = []
    with torch.no_grad():
        for i in (0, 1):
            ids = torch.tensor([data.prompts[i] + data.targets[i]])
            logp = F.log_softmax(net(input_ids=ids).logits[0, :-1].float(), -1)
            nll += [-float(logp[p, ids[0, p + 1]]) for p in range(len(data.prompts[i]) - 1, ids.shape[1] - 1)]
        loss = float(answer_loss(net, batch))
    assert loss == pytest.approx(float(np.mean(nll)), rel=1e-4)
    labels = batch.pop("labels")
    with torch.no_grad():  # and it is what transformers' own loss gives for these labels
        assert loss == pytest.approx(float(net(**batch, labels=labels).loss), rel=1e-4)


@pytest.mark.parametrize("prediction, target, answers, same", [
    (" The boxes hold 3 * 40 = 120.\n#### 1,234", "#### 1234", "gsm8k", True),   # thousands separator
    ("#### -5", "In the evening it was 3 - 8 = -5 degrees.\n#### -5", "gsm8k", True),  # a negative answer
    ("#### \u22125", "#### -5", "gsm8k", True),                                     # a typographic minus
    ("#### +7", "#### 7", "gsm8k", True),                                           # an explicit plus sign
    ("#### $1,200.00", "#### 1200", "gsm8k", True),                                 # currency, trailing zeros
    ("#### 12.5", "#### 12.50", "gsm8k", True),
    ("#### 12", "#### 13", "gsm8k", False),
    ("#### -12", "#### 12", "gsm8k", False),                                        # the sign matters
    ("#### 1234", "#### 123", "gsm8k", False),
    ("so 2 + 2 = 4", "#### 4", "gsm8k", False),                                     # no final answer written
    ("The answer is: 42", "#### 42", "gsm8k", True),                                # MetaMathQA's style
    (" Positive.", "positive", "label", True),
    ("positive review", "positive", "label", False),
    ("negative\nReview: another one", "negative", "label", True),                  # only the first line counts
])
def test_exact_match_compares_final_answers(prediction, target, answers, same):
    assert exact_match(prediction, target, answers) is same


def test_final_answer_and_normalisation():
    assert final_answer("step one\nstep two\n#### 1,050") == "1,050"
    assert normalise_answer("1,050") == "1050" and normalise_answer(" -0.0 ") == "0"


def test_constrained_choice_picks_the_most_likely_class_word_as_an_unbatched_model_would(tiny):
    """Batched, padded, longest-first scoring must equal the sum of log-probabilities of each class word
    computed one example at a time without padding."""
    from tunebench.methods.causal_lm import constrained_choice, score_test_split, target_logprobs

    net, tokenizer = tiny
    prompts = ["good film", "a dull and overlong story with no end", "fine", "bad acting but a great score overall",
               "meh", "the best thing this year", "two hours lost", "warm , funny and wise", "no", "a mess"]
    labels = ["good" if any(w in p for w in ("good", "best", "warm", "fine")) else "bad" for p in prompts]
    codec, data = encoded(tokenizer, prompts, labels)
    net = copy.deepcopy(net).train()  # a few steps, so that the two words' likelihoods differ by prompt
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(15):
        net(**codec.train_batch(data, list(range(len(prompts))))).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    net.eval()

    def unbatched(word: str) -> np.ndarray:
        target, out = codec.target_ids(word), []
        with torch.no_grad():
            for prompt in data.prompts:
                ids = torch.tensor([prompt + target])
                logp = F.log_softmax(net(input_ids=ids).logits[0, :-1].float(), -1)
                out.append(sum(float(logp[p, ids[0, p + 1]]) for p in range(len(prompt) - 1, ids.shape[1] - 1)))
        return np.array(out)

    sums, counts = target_logprobs(net, codec, data, 3, [codec.target_ids("positive result")])  # a 3-token target
    np.testing.assert_allclose(sums, unbatched("positive result"), rtol=1e-4, atol=1e-4)
    assert set(counts) == {3}
    classes = ["bad", "good"]
    reference = np.stack([unbatched(c) for c in classes], axis=1).argmax(1)
    assert constrained_choice(net, codec, data, classes, 3).tolist() == reference.tolist()
    assert len(set(reference.tolist())) == 2, "both classes chosen somewhere: the check can fail"
    # The test split's loss on a label task comes from the choice scores of the gold words: the same numbers.
    task = SimpleNamespace(meta={"answers": "label"}, classes=classes,
                           test=SimpleNamespace(y=np.array([classes.index(label) for label in labels])))
    gold_sums, gold_counts = target_logprobs(net, codec, data, 3)
    sums, counts, choice = score_test_split(net, codec, data, task, 3)
    np.testing.assert_allclose(sums, gold_sums, rtol=1e-4, atol=1e-4)
    assert counts.tolist() == gold_counts.tolist() and choice.tolist() == reference.tolist()


def _worked_lines_are_right(solution: str) -> bool:
    for a, op, b, c in re.findall(r"(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)", solution):
        a, b, c = int(a), int(b), int(c)
        if {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op] != c:
            return False
    return True


def test_arithmetic_task_is_gsm8k_format_with_disjoint_number_ranges_and_correct_solutions():
    from omegaconf import OmegaConf

    from tunebench.core.configs import compose_group
    from tunebench.datasets import load

    task = load(compose_group("data", "arithmetic", train_size=200, validation_size=50, test_size=100))
    assert (len(task.train), len(task.validation), len(task.test)) == (200, 50, 100) and task.modality == "generation"
    assert all(t.rsplit("\n", 1)[-1].startswith("#### ") for t in task.test.targets)
    assert all(_worked_lines_are_right(t) for s in (task.train, task.validation, task.test) for t in s.targets)
    assert any(final_answer(t).startswith("-") for t in task.test.targets), "negative answers occur"
    assert any("," in q for q in task.test.x), "questions with thousands separators occur"
    assert not set(task.train.x) & set(task.test.x) and not set(task.train.x) & set(task.validation.x)
    assert task.majority_baseline() < 0.05  # the trivial baseline: the most frequent training answer
    again = load(compose_group("data", "arithmetic", train_size=200, validation_size=50, test_size=100))
    assert again.data_hash() == task.data_hash()  # seeded: the same task every time
    bad = OmegaConf.merge(compose_group("data", "arithmetic"), {"ranges": {"test": [30, 60]}})
    with pytest.raises(ValueError, match=r"data.ranges: train \[2, 39\] and test \[30, 60\] overlap"):
        load(bad)


def test_the_peft_benchmark_preset_counts_parameters_offline_from_the_published_config(tmp_path):
    """The dry run of experiment=peft_method_comparison: Llama-3.2-3B from its config.json on the meta device,
    no weights; its LoRA (r=32 on peft's default q_proj / v_proj) trains 28 layers x 32 x ((3072 + 3072) + (3072 + 1024)) = 9,175,040 parameters."""
    proc = run_tunebench(["run", "experiment=peft_method_comparison", "model=llama32_3b_config", "data=arithmetic",
                          "count_only=true", "logger=none", "sweep=count"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(next((tmp_path / "results" / "runs" / "count").glob("*.json")).read_text())
    assert record["cost"]["params_trainable"] == 9_175_040
    assert record["cost"]["params_total"] == 3_212_749_824 + 9_175_040


def test_training_a_model_without_weights_is_refused(tmp_path):
    proc = run_tunebench(["run", "data=arithmetic", "model=llama32_3b_config", "method=lora", "logger=none", "sweep=meta"],
                         tmp_path, timeout=300)
    assert proc.returncode != 0
    record = json.loads(next((tmp_path / "results" / "runs" / "meta").glob("*.json")).read_text())
    assert record["status"] == "failed"
    assert "model=llama32_3b_config is a published configuration without weights" in record["error"]["message"]


def test_qlora_refuses_where_bitsandbytes_cannot_run(tiny):
    from tunebench.core.configs import compose_group
    from tunebench.methods import method_for

    method_cfg = compose_group("method", "qlora")
    with pytest.raises(RuntimeError, match=r"method=qlora needs .*(CUDA|bitsandbytes)"):
        method_for(method_cfg).adapt(tiny[0], method_cfg)


def test_a_learned_prompt_starts_as_the_tasks_instruction(tiny):
    """method.generation_init=instruction: prompt tuning's virtual tokens start as the instruction's token embeddings
    (peft's TEXT init), prefix tuning's keys and values as the base model's for the instruction (peft's KV-prefix
    init); a method without a learned prompt, or a task without an instruction, is refused by name."""
    from types import SimpleNamespace

    from tunebench.core.configs import compose_group
    from tunebench.methods import method_for
    from tunebench.methods.causal_lm import start_from_instruction

    model, tokenizer = tiny
    instruction = ("read the question, add the two numbers it gives one step at a time, write each step on its own "
                   "line and then the final number after four hash signs")
    task = SimpleNamespace(name="t", meta={"instruction": instruction})
    prompt_cfg = compose_group("method", "prompt")
    prompt = method_for(prompt_cfg)
    net = prompt.adapt(copy.deepcopy(model), prompt_cfg)
    start_from_instruction(prompt, net, tokenizer, task)
    n = prompt_cfg.decoder_virtual_tokens  # a decoder's count, not the encoders' peft.num_virtual_tokens
    assert n != prompt_cfg.peft.num_virtual_tokens and net.peft_config["default"].num_virtual_tokens == n
    ids = tokenizer(instruction)["input_ids"][:n]
    torch.testing.assert_close(net.prompt_encoder["default"].embedding.weight.detach(),
                               model.get_input_embeddings().weight[ids].detach())
    assert net.peft_config["default"].prompt_tuning_init_text == instruction

    prefix_cfg = compose_group("method", "prefix")
    prefix = method_for(prefix_cfg)
    net = prefix.adapt(copy.deepcopy(model), prefix_cfg)
    start_from_instruction(prefix, net, tokenizer, task)
    ids = torch.tensor([tokenizer(instruction)["input_ids"]])
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    keys = cache.layers[0].keys if hasattr(cache, "layers") else cache[0][0]
    n = prefix_cfg.decoder_virtual_tokens
    packed = net.prompt_encoder["default"].embedding.weight.detach().view(n, 2 * model.config.num_hidden_layers, -1)
    torch.testing.assert_close(packed[:, 0], keys[0, :, :n].transpose(0, 1).reshape(n, -1))
    with pytest.raises(ValueError, match=r"needs at least the prefix's 24 virtual tokens \(method.decoder_virtual_tokens\)"):
        start_from_instruction(prefix, net, tokenizer, SimpleNamespace(name="t", meta={"instruction": "too short"}))

    lora_cfg = compose_group("method", "lora")
    lora = method_for(lora_cfg)
    with pytest.raises(ValueError, match="method=lora: generation_init=instruction .* no learned prompt"):
        start_from_instruction(lora, lora.adapt(copy.deepcopy(model), lora_cfg), tokenizer, task)
    with pytest.raises(ValueError, match="data=t has no instruction; set data.instruction"):
        start_from_instruction(prompt, net, tokenizer, SimpleNamespace(name="t", meta={"instruction": None}))


def test_prompt_tuning_text_init_embeds_its_text_with_the_models_own_tokenizer(tiny):
    """prompt_tuning_init=TEXT needs a tokenizer path in peft; the default is the folder the model came from, and the
    virtual tokens start as the embeddings of the init text's tokens (repeated to num_virtual_tokens)."""
    from omegaconf import OmegaConf

    from tunebench.core.configs import compose_group
    from tunebench.methods import method_for

    model, tokenizer = tiny
    method_cfg = compose_group("method", "prompt")
    OmegaConf.update(method_cfg, "peft.prompt_tuning_init", "TEXT")
    OmegaConf.update(method_cfg, "peft.prompt_tuning_init_text", "answer the sum", force_add=True)
    OmegaConf.update(method_cfg, "decoder_virtual_tokens", None)  # peft.num_virtual_tokens (10), as on an encoder
    net = method_for(method_cfg).adapt(copy.deepcopy(model), method_cfg)
    ids = tokenizer("answer the sum")["input_ids"]
    ids = (ids * 10)[:10]
    expected = model.get_input_embeddings().weight[ids].detach()
    torch.testing.assert_close(net.prompt_encoder["default"].embedding.weight.detach(), expected)
    assert net.peft_config["default"].tokenizer_name_or_path == str(model.name_or_path)


def test_a_tiny_causal_lm_trains_through_the_cli_with_lora_and_prefix_tuning(tmp_path, tiny_llama_dir):
    proc = run_tunebench(["run", "-m", "data=arithmetic", "model=hf", f"model.name={tiny_llama_dir}", "method=lora,prefix",
                          "logger=none", "sweep=tiny_lm", "data.train_size=24", "data.validation_size=4",
                          "data.test_size=6", "data.max_new_tokens=8", "train.batch_size=8", "train.evals=1"],
                         tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs" / "tiny_lm").glob("*.json")]
    assert sorted(r["cell"]["method"] for r in records) == ["lora", "prefix"]
    for r in records:
        m = r["metrics"]
        assert r["status"] == "ok", r.get("error")
        assert r["task"]["modality"] == "generation" and m["steps"] == 3
        assert len(m["test_correct"]) == 6 and m["test_loss"] > 0 and m["test_perplexity"] == pytest.approx(np.exp(m["test_loss"]))
        assert m["generation_tokens_per_second"] > 0 and m["train_tokens_per_second"] > 0
        assert 0 < r["cost"]["params_trainable"] < r["cost"]["params_total"]
        assert r["cost"]["training_state_bytes"] > 0


def test_the_metamath_to_gsm8k_recipe_loads_local_files_in_the_hub_format(tmp_path):
    """data=hf_generation through datasets.load_dataset, offline: MetaMathQA's columns (query, response) to train,
    GSM8K's (question, answer) for validation and test, as on the hub."""
    from omegaconf import OmegaConf

    from tunebench.core.configs import compose_group
    from tunebench.datasets import load

    def jsonl(name, rows):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)

    metamath = jsonl("metamath.json", [{"query": f"What is {i} + {i}?", "response": f"{i} + {i} = {2 * i}. The answer is: {2 * i}",
                                        "type": "GSM_AnsAug"} for i in range(30)])
    gsm_train = jsonl("gsm_train.jsonl", [{"question": f"Q{i}", "answer": f"{i} * 2 = {2 * i}\n#### {2 * i}"} for i in range(20)])
    gsm_test = jsonl("gsm_test.jsonl", [{"question": f"T{i}", "answer": f"#### {i:,}"} for i in range(1000, 1012)])
    cfg = OmegaConf.merge(compose_group("data", "hf_generation"), {
        "train": {"path": "json", "data_files": {"train": metamath}},
        "validation": {"path": "json", "data_files": {"train": gsm_train}},
        "test": {"path": "json", "config_name": None, "data_files": {"test": gsm_test}},
        "validation_size": 5})
    task = load(cfg)
    assert (len(task.train), len(task.validation), len(task.test)) == (30, 5, 12) and task.modality == "generation"
    assert final_answer(task.train.targets[0]).isdigit() and set(task.validation.x) <= {f"Q{i}" for i in range(20)}
    assert exact_match("so it is 1000\n#### 1000", task.test.targets[0], "gsm8k")  # "#### 1,000" in the file
    cfg.test.answer_column = "solution"
    with pytest.raises(ValueError, match=r"data.test.answer_column='solution': json has columns \['question', 'answer'\]"):
        load(cfg)


def test_a_long_prompt_loses_its_start_and_keeps_its_answer(tiny):
    _, tokenizer = tiny
    codec, data = encoded(tokenizer, ["one two three four five six seven eight nine ten eleven twelve"], ["forty two"], max_length=8)
    target = codec.target_ids("forty two")
    assert data.targets[0] == target and len(data.prompts[0]) + len(target) == 8
    assert data.prompts[0] == codec.prompt_ids("one two three four five six seven eight nine ten eleven twelve")[-(8 - len(target)):]
