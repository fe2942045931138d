"""Whole prompts (prompt_column): plain text, chat messages, chat_template and system_prompt; answers that end at EOS
(kept in the PPO step) or a stop string; missing_eos_penalty; the dataset's columns reaching the reward and the judges
in the batch's order, on one and two processes; the start-up errors; an exact kill -9 resume."""

import json
import signal
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer
from trl import PPOConfig, PPOTrainer

import train_ppo
from conftest import REWARDS, assert_same_rows, last_line, run_launched, run_script
from ppo_lm.checkpoints import list_checkpoints
from ppo_lm.errors import RunError
from ppo_lm.metrics import read_metrics
from ppo_lm.models import load_model
from ppo_lm.prompts import end_responses, whole_prompts
from ppo_lm.tiny_models import CHAT_TEMPLATE


def prompt_args(tiny_chat, **overrides):
    settings = {"dataset_name": tiny_chat["data"], "dataset_split": "train", "dataset_config": None,
                "prompt_column": "messages",
                "chat_template": False, "system_prompt": None, "prompt_max_tokens": 64,
                "model_name_or_path": tiny_chat["policy"]}
    return SimpleNamespace(**settings | overrides)


def test_each_prompt_mode_renders_as_the_tokenizer_does(tiny_chat):
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat["policy"])
    assert tokenizer.chat_template == CHAT_TEMPLATE

    def first(**overrides):
        rows = whole_prompts(prompt_args(tiny_chat, **overrides), tokenizer)
        return tokenizer.decode(rows[0]["input_ids"]), rows

    plain, rows = first(prompt_column="prompt")
    assert rows[0]["query"].startswith("Write about the ") and plain == rows[0]["query"]  # used whole, no template
    assert set(rows.column_names) == {"input_ids", "query", "messages", "keyword", "max_words", "row"}

    wrapped, _ = first(prompt_column="prompt", chat_template=True)
    messages, rows = first(system_prompt="Be brief.")
    query = rows[0]["query"]
    assert wrapped == tokenizer.apply_chat_template([{"role": "user", "content": query}], add_generation_prompt=True,
                                                    tokenize=False)
    assert messages == f"system: Be brief.<|endoftext|>user: {query}<|endoftext|>assistant:"
    assert rows[0]["keyword"] in query and "prompt" in rows.column_names and "messages" not in rows.column_names
    assert [rows[i]["row"] for i in range(3)] == [0, 1, 2]


def test_prompts_longer_than_the_limit_are_dropped_with_a_count(tiny_chat, capsys):
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat["policy"])
    lengths = [len(r) for r in whole_prompts(prompt_args(tiny_chat), tokenizer)["input_ids"]]
    limit = sorted(lengths)[len(lengths) // 2]
    rows = whole_prompts(prompt_args(tiny_chat, prompt_max_tokens=limit), tokenizer)
    dropped = sum(n > limit for n in lengths)
    assert 0 < dropped < len(lengths) and len(rows) == len(lengths) - dropped
    assert all(len(ids) <= limit for ids in rows["input_ids"])
    assert (f"note: dataset_name: dropped {dropped} of {len(lengths)} prompts longer than prompt_max_tokens "
            f"({limit} tokens; the longest has {max(lengths)})") in capsys.readouterr().err


def test_answers_end_at_eos_which_is_in_the_ppo_step(tiny_chat):
    """generate() of train_ppo.py with, as EOS, a token the tiny model wrote in some but not all of 8 answers (found by
    a first generation with the same seed, which samples the same tokens up to each answer's first EOS): every
    response ends at its first EOS, kept, or runs to the limit; PPOTrainer.step counts the EOS among the response
    tokens."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat["policy"])
    tokenizer.pad_token = tokenizer.eos_token
    policy = load_model(tiny_chat["policy"], "policy", train_ppo.CheckedModelConfig(tiny_chat["policy"]))
    trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=8), policy, None, tokenizer)
    rows = whole_prompts(prompt_args(tiny_chat), tokenizer)[:8]
    queries = [torch.tensor(ids) for ids in rows["input_ids"]]
    args = SimpleNamespace(generation_batch_size=8, one_length_per_batch=False, prompt_column="messages",
                           stop_strings=[], response_max_tokens=12, output_dir="unused")
    sampling = {"do_sample": True, "top_k": 0, "top_p": 1.0, "max_new_tokens": 12,
                "pad_token_id": tokenizer.pad_token_id}

    def generate(eos: int):
        torch.manual_seed(0)
        return train_ppo.generate(trainer, tokenizer, queries, args, None, sampling | {"eos_token_id": eos}, step=1)

    free, _ = generate(tokenizer.eos_token_id)  # <|endoftext|>: the tiny model does not write it here
    assert all(len(r) == 12 for r in free)
    counts = {t: sum(t in r.tolist() for r in free) for t in {t for r in free for t in r.tolist()}}
    eos = next(t for t, n in sorted(counts.items()) if 0 < n < 8)  # in some answers, not all
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    assert tokenizer.eos_token_id == eos
    responses, ended = generate(eos)
    assert ended == [eos in r.tolist() for r in free]
    for response, done, before in zip(responses, ended, free):
        at_eos = (response == eos).nonzero().flatten().tolist()
        assert (at_eos == [len(response) - 1]) if done else (at_eos == [] and len(response) == 12)
        assert response.tolist() == before.tolist()[: len(response)]  # the same sample, up to its first EOS
    stats = trainer.step(queries, responses, [torch.tensor(0.0)] * 8)
    assert stats["tokens/responses_len_mean"] == pytest.approx(sum(len(r) for r in responses) / 8)


def test_stop_strings_end_a_response_after_them(tiny_chat):
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat["policy"])
    said = [tokenizer("The film was good. The cast")["input_ids"], tokenizer("The film was good")["input_ids"]]
    eos = tokenizer.eos_token_id
    responses = [torch.tensor(said[0]), torch.tensor(said[1]), torch.tensor(said[1] + [eos])]
    ended_responses, ended = end_responses(responses, tokenizer, ["."], max_tokens=len(said[1]))
    assert tokenizer.decode(ended_responses[0]) == "The film was good."
    assert ended == [True, False, True]  # a stop string; the limit; an EOS (kept)
    assert ended_responses[2].tolist() == said[1] + [eos]


def test_a_chat_run_passes_the_columns_in_order_and_penalises_unended_answers(tiny_chat, chat_settings, tiny_config,
                                                                               tmp_path):
    """One process: uses_keyword raises unless each keyword is the one of its own prompt, at every step, at start-up
    and in the held-out evaluation (a .jsonl with the same columns), as reward and as judge; the zero reward plus
    missing_eos_penalty -1 makes env/reward_mean minus the share of answers that reached the limit."""
    settings = chat_settings | {"stop_strings": [" looked"]}  # in about half the tiny model's answers
    config = tiny_config(**settings, reward_fn=f"{REWARDS}:zero", missing_eos_penalty=-1.0,
                         eval_reward_fns=[f"{REWARDS}:uses_keyword"], reward_kwargs={"out": str(tmp_path)},
                         eval_file=tiny_chat["held_out"], steps=2)
    result = run_script("--config", config)
    assert result.returncode == 0, result.stderr
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(-1.0 < r["env/reward_mean"] < 0.0 for r in rows)  # some ended at the stop string, some ran out
    assert all(r["tokens/responses_len_mean"] < 12 for r in rows)
    eval_md = (tmp_path / "run" / "eval.md").read_text()
    assert "responses ending at EOS or at 12 tokens as in training (ended: " in eval_md
    assert "includes missing_eos_penalty -1 where an answer did not end" in eval_md
    # the held-out training reward is the training score: the penalty where an answer ran out, as in training
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    for side in (report["before"], report["after"]):
        assert side[report["scorers"][0]]["scores"] == [0.0 if done else -1.0 for done in side["ended"]]
    assert 0 < sum(report["after"]["ended"]) < len(report["after"]["ended"])
    # the judge saw the held-out rows in order: rows 0-7 before, then after
    assert (tmp_path / "rows-0").read_text().splitlines()[-2:] == ["0 1 2 3 4 5 6 7"] * 2


def test_two_processes_each_pass_their_own_rows(tiny_chat, chat_settings, tiny_config, tmp_path):
    config = tiny_config(**chat_settings, reward_fn=f"{REWARDS}:uses_keyword", reward_kwargs={"out": str(tmp_path)},
                         batch_size=8, mini_batch_size=4, steps=2)
    codes, stderr = run_launched(2, config)
    assert codes == [0, 0], stderr
    per_rank = [(tmp_path / f"rows-{rank}").read_text().splitlines() for rank in (0, 1)]
    assert [len(calls) for calls in per_rank] == [3, 3]  # the start-up probe, then one call a step
    for step in (1, 2):
        rows = [set(map(int, calls[step].split())) for calls in per_rank]
        assert len(rows[0]) == len(rows[1]) == 8 and not rows[0] & rows[1]  # each process its own slice


@pytest.mark.parametrize("settings, message", [
    ({"model_name_or_path": "{plain}"}, "the tokenizer of '{plain}' has no chat template, needed for prompt_column "
                                        "'messages' (messages)"),
    ({"prompt_column": "max_words", "system_prompt": None}, "prompt_column 'max_words' of dataset_name '{data}', row 1, holds int"),
    ({"prompt_column": "question"}, "prompt_column 'question' is not a column of dataset_name '{data}'"),
    ({"prompt_max_tokens": 5}, "every prompt of dataset_name '{data}' is longer than prompt_max_tokens (5 tokens)"),
    ({"reward_fn": "{rewards}:needs_answer"}, "reward function 'needs_answer' raised TypeError: "),
    ({"prompt_column": None, "dataset_name": "{text}"}, "system_prompt applies to whole prompts, which end at EOS"),
    ({"reward_kwargs": {"keyword": "film"}}, "reward_kwargs 'keyword' is also a column of the dataset"),
])
def test_whole_prompt_start_up_errors(settings, message, tiny, tiny_chat, chat_settings, tiny_config, tmp_path):
    fill = {"plain": tiny["policy"], "data": tiny_chat["data"], "rewards": REWARDS, "text": tiny["data"]}
    settings = {k: v.format(**fill) if isinstance(v, str) else v for k, v in settings.items()}
    config = tiny_config(**(chat_settings | {"reward_fn": f"{REWARDS}:zero", "reward_kwargs": {}} | settings))
    with pytest.raises(RunError) as e:
        train_ppo.main(["--config", str(config)])
    assert str(e.value).startswith(message.format(**fill)), str(e.value)
    assert e.value.code == 2 and not (tmp_path / "run").exists()


def test_a_chat_run_killed_and_resumed_is_exact(chat_settings, faults, tmp_path):
    """Whole prompts in the chat template, killed with SIGKILL in step 3 (after checkpoint-2), resumed: the same rows
    as an uninterrupted run."""
    settings = chat_settings | {"steps": 4, "save_steps": 2, "missing_eos_penalty": -0.5}
    out = tmp_path / "run"
    killed = run_script("--config", faults("killed", at=4, **settings))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    resumed = run_script("--config", faults(**settings), "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, last_line(resumed.stderr)
    uninterrupted = run_script("--config", faults(**settings), "--output_dir", tmp_path / "uninterrupted")
    assert uninterrupted.returncode == 0, last_line(uninterrupted.stderr)
    assert_same_rows(read_metrics(out / "metrics.jsonl"), read_metrics(tmp_path / "uninterrupted" / "metrics.jsonl"),
                     after_step=2)


def test_weighted_rewards_are_summed_and_each_logged(tiny_chat, chat_settings, tiny_config, tmp_path):
    """reward_fn [uses_keyword, one] with reward_weights [2, 0]: the score is 2 x uses_keyword (weight 0: logged
    only); each function's batch mean is its own metrics column and its own row of the held-out report."""
    keyword, constant = f"{REWARDS}:uses_keyword", f"{REWARDS}:one"
    config = tiny_config(**chat_settings, reward_fn=[keyword, constant], reward_weights=[2, 0],
                         reward_kwargs={"out": str(tmp_path)}, eval_file=tiny_chat["held_out"], eval_steps=1,
                         eval_samples=4, steps=2)
    result = run_script("--config", config)
    assert result.returncode == 0, result.stderr
    for row in read_metrics(tmp_path / "run" / "metrics.jsonl"):
        assert row[f"env/reward/{constant}"] == 1.0
        assert row["env/reward_mean"] == pytest.approx(2 * row[f"env/reward/{keyword}"])
        assert row[f"eval/reward/{constant}"] == 1.0 and row["eval/reward"] == pytest.approx(
            2 * row[f"eval/reward/{keyword}"])
    report = (tmp_path / "run" / "eval.md").read_text()
    assert f"| 2 x {keyword} + 0 x {constant} (training reward) |" in report
    assert f"| {keyword} (reward function, weight 2) |" in report and "warning" not in report


@pytest.mark.parametrize("settings, message", [
    ({"reward_weights": [1.0]}, "reward_weights has 1 weight(s) for 2 reward_fn function(s)"),
    ({"reward_weights": ["a", 1]}, "setting 'reward_weights' must be a list of numbers"),
])
def test_bad_reward_weights(settings, message, tiny_config):
    config = tiny_config(reward_fn=["vader", "sentiment_positive"], **settings)
    with pytest.raises(RunError) as e:
        train_ppo.main(["--config", str(config)])
    assert str(e.value).startswith(message) and e.value.code == 2


def test_the_gsm8k_recipe_on_tiny_stand_ins(tiny_chat, tmp_path):
    """configs/qwen_gsm8k.yaml as shipped, pointed at the tiny chat policy and a GSM8K-format file (question, answer
    ending '#### N'): the answer column reaches gsm8k_correct; the rest of the recipe (chat template, LoRA on all
    linear layers, bf16, EOS endings, the penalty) runs. (A shorter system prompt: the tiny model's context is 128.)"""

    from conftest import ROOT

    rows = [{"question": f"Tom has {a} and buys {b}. How many?",
             "answer": f"Tom has {a} + {b} = {a + b} apples.\n#### {a + b}"} for a in range(1, 9) for b in range(1, 3)]
    data = tmp_path / "gsm8k_train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_script("--config", ROOT / "configs" / "qwen_gsm8k.yaml", "--model_name_or_path", tiny_chat["policy"],
                        "--dataset_name", data, "--dataset_config", "", "--system_prompt", "Be brief.",
                        "--prompt_max_tokens", "100",
                        "--response_max_tokens", "16", "--batch_size", "8", "--mini_batch_size", "4", "--steps", "1",
                        "--output_dir", tmp_path / "run", "--eval_file", data)
    assert result.returncode == 0, result.stderr
    row = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert 0.0 <= row["env/reward/gsm8k_correct"] <= 1.0
    report = (tmp_path / "run" / "eval.md").read_text()
    assert "held-out gsm8k_correct: mean" in report and "responses ending at EOS or at 16 tokens" in report


def test_the_chat_job_on_tiny_stand_ins(tiny_chat, tmp_path):
    """configs/smollm2_chat.yaml as shipped (make train-chat), pointed at the tiny chat policy (also the judge's
    language model) and instructions made by tools/make_instructions.py: the kind, word, max_words and topic columns
    reach instruction_followed, and answer_logprob judges the held-out answers in eval.md."""
    import subprocess
    import sys

    from conftest import ROOT

    data = tmp_path / "instructions"
    subprocess.run([sys.executable, ROOT / "tools/make_instructions.py", "--out", data, "--train", "32",
                    "--heldout", "4"], check=True, capture_output=True)
    result = run_script("--config", ROOT / "configs" / "smollm2_chat.yaml", "--model_name_or_path", tiny_chat["policy"],
                        "--dataset_name", data / "train.jsonl", "--eval_file", data / "heldout.jsonl",
                        "--reward_kwargs", json.dumps({"lm": tiny_chat["policy"]}), "--response_max_tokens", "8",
                        "--batch_size", "8", "--mini_batch_size", "4", "--steps", "1", "--output_dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    row = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert 0.0 <= row["env/reward/instruction_followed"] <= 1.0
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["scorers"] == ["instruction_followed", "answer_logprob"]
    assert all(s < 0 for s in report["after"]["answer_logprob"]["scores"]) and len(report["prompts"]) == 4


def test_the_readme_task_runs_as_written(tiny_chat, tmp_path):
    """README's "Your own task": its prompt file, reward file and config, written as shown, run from their directory
    with the tiny chat policy in place of SmolLM2 and a short run; the answer column reaches the reward."""
    import os
    import re
    import subprocess
    import sys

    from conftest import ROOT

    section = (ROOT / "README.md").read_text().split("## Your own task")[1].split("\n## ")[0]
    blocks = dict(re.findall(r"```(json|python|yaml)\n(.*?)```", section, re.S))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "capitals.jsonl").write_text(blocks["json"] * 8)  # 16 rows: two batches of 8
    (tmp_path / "my_reward.py").write_text(blocks["python"])
    (tmp_path / "my_task.yaml").write_text(blocks["yaml"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, ROOT / "train_ppo.py", "--config", "my_task.yaml", "--model_name_or_path",
                             tiny_chat["policy"], "--batch_size", "8", "--mini_batch_size", "4", "--steps", "1"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    row = read_metrics(tmp_path / "runs" / "capitals" / "metrics.jsonl")[0]
    assert row["env/reward/my_reward.py:correct"] in {i / 8 for i in range(9)}
