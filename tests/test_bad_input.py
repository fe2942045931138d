"""Bad input never ends in a traceback: one line naming the setting, exit 2, and an earlier run left untouched.

The table runs `train_ppo.main` in this process (the script's `__main__` only prints a RunError's message and exits
with its code), so the cases stay fast; a few cases also run as a user runs them, to check stderr and the exit code.
"""

import json
import shutil

import pytest
import yaml

import train_ppo
from ppo_lm.checkpoints import list_checkpoints
from conftest import REWARDS, run_script, snapshot
from ppo_lm.errors import RunError
from ppo_lm.tiny_models import build_classifier

# (id, files to write {name: text or bytes}, extra argv, start of the expected message). In argv and messages
# (str.format: JSON braces are doubled), {tmp} is the case's scratch directory, {out} the finished run's output_dir,
# {data}/{policy} the tiny dataset/model, {rewards} tests/rewards.py.
CASES = [
    # config files
    ("yaml-syntax", {"c.yaml": "learning_rate: [1\n"}, ["--config", "{tmp}/c.yaml"],
     "config file '{tmp}/c.yaml' is not valid YAML at line 2"),
    ("yaml-list", {"c.yaml": "- steps: 2\n"}, ["--config", "{tmp}/c.yaml"],
     "config file '{tmp}/c.yaml' must be a mapping of `setting: value` lines, got a list"),
    ("yaml-scalar", {"c.yaml": "hello\n"}, ["--config", "{tmp}/c.yaml"],
     "config file '{tmp}/c.yaml' must be a mapping"),
    ("yaml-empty", {"c.yaml": ""}, ["--config", "{tmp}/c.yaml"], "config file '{tmp}/c.yaml' is empty"),
    ("yaml-comments", {"c.yaml": "# nothing yet\n"}, ["--config", "{tmp}/c.yaml"],
     "config file '{tmp}/c.yaml' is empty"),
    ("yaml-tag", {"c.yaml": "steps: !!python/object:os.system x\n"}, ["--config", "{tmp}/c.yaml"],
     "config file '{tmp}/c.yaml' is not valid YAML at line 1"),
    ("yaml-not-utf8", {"c.yaml": b"steps: \xff\xfe\n"}, ["--config", "{tmp}/c.yaml"],
     "config file '{tmp}/c.yaml' is not UTF-8 text"),
    ("yaml-env", {"c.yaml": "env: 3\n"}, ["--config", "{tmp}/c.yaml"], "config file '{tmp}/c.yaml': 'env' must be a"),
    ("config-twice", {"c.yaml": "steps: 2\n"}, ["--config", "{tmp}/c.yaml", "--config", "{tmp}/c.yaml"],
     "--config is given more than once"),
    ("yaml-missing", {}, ["--config", "{tmp}/none.yaml"], "config file '{tmp}/none.yaml' not found"),
    ("yaml-unknown", {"c.yaml": "learnin_rate: 1.0e-5\n"}, ["--config", "{tmp}/c.yaml"],
     "unknown setting 'learnin_rate': did you mean 'learning_rate'?"),
    ("abbreviation", {}, ["--save_ev", "5"], "unknown setting 'save_ev': did you mean 'save_steps'?"),
    # values: types, ranges, choices, unused PPOConfig fields
    ("lr-negative", {}, ["--learning_rate", "-1"], "setting 'learning_rate' must be in (0, inf), got -1.0"),
    ("lr-zero", {}, ["--learning_rate", "0"], "setting 'learning_rate' must be in (0, inf), got 0.0"),
    ("mini-batch-zero", {}, ["--mini_batch_size", "0"], "setting 'mini_batch_size' must be in [1, inf), got 0"),
    ("batch-negative", {}, ["--batch_size", "-4"], "setting 'batch_size' must be in [1, inf), got -4"),
    ("grad-accum-zero", {}, ["--gradient_accumulation_steps", "0"], "setting 'gradient_accumulation_steps' must be"),
    ("ppo-epochs-zero", {}, ["--ppo_epochs", "0"], "setting 'ppo_epochs' must be in [1, inf), got 0"),
    ("lora-r-zero", {}, ["--use_peft", "true", "--lora_r", "0"], "setting 'lora_r' must be in [1, inf), got 0"),
    ("temperature-zero", {}, ["--temperature", "0"], "setting 'temperature' must be in (0, inf), got 0.0"),
    ("top-k-negative", {}, ["--top_k", "-1"], "setting 'top_k' must be in [0, inf), got -1"),
    ("top-p-above-1", {}, ["--top_p", "1.5"], "setting 'top_p' must be in (0, 1], got 1.5"),
    ("seed-negative", {}, ["--seed", "-1"], "setting 'seed' must be in [0, 4294967295], got -1"),
    ("gamma-above-1", {}, ["--gamma", "2"], "setting 'gamma' must be in [0, 1], got 2.0"),
    ("save-steps-zero", {}, ["--save_steps", "0"], "setting 'save_steps' must be in [1, inf), got 0"),
    ("old-name", {}, ["--save_every", "5"], "setting 'save_every' is now 'save_steps', as in transformers' Trainer"),
    ("old-name-yaml", {"c.yaml": "keep_last: 3\n"}, ["--config", "{tmp}/c.yaml"],
     "setting 'keep_last' is now 'save_total_limit'"),
    ("response-min-above-max", {}, ["--response_min_tokens", "10", "--response_max_tokens", "5"],
     "need response_min_tokens <= response_max_tokens, got 10 and 5"),
    ("kl-penalty-choice", {"c.yaml": "kl_penalty: foo\n"}, ["--config", "{tmp}/c.yaml"],
     "setting 'kl_penalty' must be one of ['kl', 'abs', 'mse', 'full'], got 'foo'"),
    ("batch-null", {"c.yaml": "batch_size: null\n"}, ["--config", "{tmp}/c.yaml"],
     "setting 'batch_size' must be a int, got None"),
    ("steps-float", {"c.yaml": "steps: 1.5\n"}, ["--config", "{tmp}/c.yaml"], "setting 'steps' must be a int, got 1.5"),
    ("reward-kwargs-list", {"c.yaml": "reward_kwargs: [1, 2]\n"}, ["--config", "{tmp}/c.yaml"],
     "setting 'reward_kwargs' must be a mapping"),
    ("reward-kwargs-cli-list", {}, ["--reward_kwargs", "[1]"],
     "argument --reward_kwargs/--reward-kwargs: not a JSON object: [1]"),
    ("unused-ppo-field", {}, ["--query_dataset", "imdb"],
     "setting 'query_dataset' is a PPOConfig field this script does not use: set 'dataset_name' instead"),
    ("batch-not-multiple", {}, ["--batch_size", "12"], "batch_size must be a multiple of mini_batch_size"),
    ("min-kl-coef-above-init", {}, ["--init_kl_coef", "0.1", "--min_kl_coef", "0.3"],
     "min_kl_coef (0.3) is above init_kl_coef (0.1)"),
    ("min-kl-coef-negative", {}, ["--min_kl_coef", "-1"], "setting 'min_kl_coef' must be in [0, inf)"),
    ("min-kl-coef-fixed-beta", {}, ["--adap_kl_ctrl", "false", "--min_kl_coef", "0.1"],
     "min_kl_coef is a floor for the adaptive KL controller, but adap_kl_ctrl is false"),
    # data
    ("data-empty-jsonl", {"d.jsonl": ""}, ["--dataset_name", "{tmp}/d.jsonl"],
     "dataset_name '{tmp}/d.jsonl' could not"),
    ("data-empty-txt", {"d.txt": ""}, ["--dataset_name", "{tmp}/d.txt"], "dataset_name '{tmp}/d.txt' could not"),
    ("data-bad-json", {"d.jsonl": '{"text": "fine and long enough to keep"}\n{"text": oops}\n'},
     ["--dataset_name", "{tmp}/d.jsonl"], "dataset_name '{tmp}/d.jsonl' could not be read"),
    ("data-not-utf8", {"d.txt": b"a review \xff\xfe that is long enough\n" * 40}, ["--dataset_name", "{tmp}/d.txt"],
     "dataset_name '{tmp}/d.txt' could not be read"),
    ("data-numbers", {"d.jsonl": "".join(json.dumps({"text": i}) + "\n" for i in range(40))},
     ["--dataset_name", "{tmp}/d.jsonl"], "text_column 'text' of '{tmp}/d.jsonl' holds Value('int64'), not text"),
    ("data-nulls", {"d.jsonl": '{"text": null}\n' * 40}, ["--dataset_name", "{tmp}/d.jsonl"],
     "text_column 'text' of '{tmp}/d.jsonl' holds Value('null'), not text"),
    ("data-directory", {"dir.jsonl/x": "x"}, ["--dataset_name", "{tmp}/dir.jsonl"],
     "dataset_name: '{tmp}/dir.jsonl' is a directory"),
    ("data-no-column", {}, ["--text_column", "review"], "text_column 'review' is not a column of '{data}'"),
    # eval_file
    ("eval-empty", {"e.txt": ""}, ["--eval_file", "{tmp}/e.txt"], "eval_file '{tmp}/e.txt' has no prompts"),
    ("eval-blank-lines", {"e.txt": "\n  \n\n"}, ["--eval_file", "{tmp}/e.txt"],
     "eval_file '{tmp}/e.txt' has no prompts"),
    ("eval-not-utf8", {"e.txt": b"The film \xff\n"}, ["--eval_file", "{tmp}/e.txt"],
     "eval_file '{tmp}/e.txt' is not UTF-8 text"),
    ("eval-missing", {}, ["--eval_file", "{tmp}/none.txt"], "eval_file '{tmp}/none.txt' not found"),
    ("eval-directory", {"edir/x": "x"}, ["--eval_file", "{tmp}/edir"], "eval_file '{tmp}/edir' not found (or not a"),
    # models
    ("model-empty-dir", {"empty/.keep": ""}, ["--model_name_or_path", "{tmp}/empty"],
     "model_name_or_path '{tmp}/empty' could not be loaded"),
    ("model-config-file", {}, ["--model_name_or_path", "{policy}/config.json"],
     "model_name_or_path '{policy}/config.json' is a file: point it to the directory"),
    ("model-classifier", {}, ["--model_name_or_path", "{tmp}/classifier"],
     "model_name_or_path '{tmp}/classifier' is a distilbert model (DistilBertForSequenceClassification) with no"),
    ("model-truncated", {}, ["--model_name_or_path", "{tmp}/truncated"],
     "model_name_or_path '{tmp}/truncated' could not be loaded (Error while deserializing header"),
    ("lora-missing-modules", {}, ["--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj"],
     "lora_target_modules ['q_proj', 'v_proj'] are not modules of"),
    ("lora-without-peft", {}, ["--lora_r", "8"], "lora_r is set but use_peft is false"),
    # settings handed to accelerate inside PPOTrainer, after output_dir is in use: checked before
    ("accelerator-unknown", {}, ["--accelerator_kwargs", '{{"mixed_precison": "bf16"}}'],
     "accelerator_kwargs: 'mixed_precison' is not an argument of accelerate's Accelerator; did you mean "
     "'mixed_precision'?"),
    ("accelerator-precision", {}, ["--accelerator_kwargs", '{{"mixed_precision": "bf8"}}'],
     "accelerator_kwargs: mixed_precision must be one of ['no', 'fp8', 'fp16', 'bf16'], got 'bf8'"),
    ("accelerator-set-by-setting", {}, ["--accelerator_kwargs", '{{"gradient_accumulation_steps": 2}}'],
     "accelerator_kwargs: 'gradient_accumulation_steps' is set from the setting 'gradient_accumulation_steps'"),
    ("accelerator-dynamo", {}, ["--accelerator_kwargs", '{{"dynamo_backend": "fast"}}'],
     "accelerator_kwargs: dynamo_backend must be one of"),
    ("project-kwargs-unknown", {}, ["--project_kwargs", '{{"logdir": "x"}}'],
     "project_kwargs: got an unexpected keyword argument 'logdir'"),
    ("tracker-kwargs-not-mapping", {}, ["--tracker_kwargs", '{{"wandb": 3}}'],
     "tracker_kwargs: the value of 'wandb' must be a mapping"),
    # paths
    ("dataset-split-local", {}, ["--dataset_split", "validation"], "dataset_split 'validation' is for hub datasets"),
    ("output-dir-not-creatable", {}, ["--output_dir", "/proc/ppo-run"],
     "output_dir '/proc/ppo-run' cannot be created"),
    ("output-dir-is-file", {"file_out": "x"}, ["--output_dir", "{tmp}/file_out"],
     "output_dir '{tmp}/file_out' is a file, not a directory"),
    ("reward-not-py", {"reward.txt": "a reward function, but not in a .py file\n"}, ["--reward_fn", "{tmp}/reward.txt:f"],
     "reward_fn '{tmp}/reward.txt:f': '{tmp}/reward.txt' is not a Python file"),
    ("judge-unknown", {}, ["--eval_reward_fns", "vader", "no_such_judge"],
     "eval_reward_fns 'no_such_judge': no function"),
    ("no-resume", {}, ["--overwrite_output_dir", "false"],
     "output_dir '{out}' holds an earlier run: resume it with --resume_from_checkpoint latest"),
    ("min-text-length", {}, ["--min_text_length", "100000"], "dataset '{data}' has no text of at least 100000"),
    ("context", {}, ["--response_max_tokens", "200"], "prompt_max_tokens + response_max_tokens = 208 exceeds the"),
    ("hub-model-offline", {}, ["--model_name_or_path", "gpt2"],
     "model_name_or_path 'gpt2' is not a local directory and could not be fetched"),
    ("hub-dataset-offline", {}, ["--dataset_name", "stanfordnlp/imdb"], "dataset 'stanfordnlp/imdb' could not be"),
    ("reward-raises", {}, ["--reward_fn", "{rewards}:divides_by_zero", "--steps", "3", "--resume_from_checkpoint",
                           "latest"],
     "reward function 'divides_by_zero' raised ZeroDivisionError: division by zero — on sample 0: prompt="),
    # reward function and judges: called once on two prompts at start-up
    ("reward-model-missing", {}, ["--reward_fn", "sentiment_classifier",
                                  "--reward_kwargs", '{{"model": "{tmp}/none"}}'],
     "reward function 'sentiment_classifier' raised ValueError: reward_kwargs model: directory '{tmp}/none' not found"),
    ("reward-label-wrong", {}, ["--reward_fn", "sentiment_classifier", "--reward_kwargs",
                                '{{"model": "{tmp}/classifier", "positive_label": "GOOD"}}'],
     "reward function 'sentiment_classifier' raised ValueError: label 'GOOD' is not one of the classifier's labels"),
    ("judge-fails-at-start", {}, ["--eval_reward_fns", "{rewards}:one_too_few"],
     "reward function 'one_too_few' returned 1 values for 2 responses"),
    ("hub-offline", {}, ["--hub_model_id", "me/ppo-model"],
     "hub_model_id 'me/ppo-model': the Hugging Face Hub is offline here (HF_HUB_OFFLINE)"),
    ("quantization", {}, ["--load_in_4bit", "true"], "setting 'load_in_4bit' is a ModelConfig field this script does"),
    ("no-model", {"c.yaml": "steps: 2\n"}, ["--config", "{tmp}/c.yaml"], "setting 'model_name_or_path' is required"),
    ("resume-none", {}, ["--resume_from_checkpoint", "{tmp}/nowhere"], "resume_from_checkpoint '{tmp}/nowhere' is not"),
    # files and directories that are not there or cannot be used
    ("data-missing", {}, ["--dataset_name", "{tmp}/none.jsonl"], "dataset_name: file '{tmp}/none.jsonl' not found"),
    ("data-not-utf8-jsonl", {"bad.jsonl": b'{"text": "\xff\xfe ' + b"a review long enough to be kept " * 2 + b'"}\n'},
     ["--dataset_name", "{tmp}/bad.jsonl"], "dataset_name '{tmp}/bad.jsonl' could not be read (UnicodeDecodeError"),
    ("model-dir-missing", {}, ["--model_name_or_path", "{tmp}/no_model"],
     "model_name_or_path: directory '{tmp}/no_model' not found"),
    ("ref-model-missing", {}, ["--ref_model_name_or_path", "{tmp}/no_ref"],
     "ref_model_name_or_path: directory '{tmp}/no_ref' not found"),
    ("output-dir-foreign", {}, ["--output_dir", "/proc/sys"],
     "output_dir '/proc/sys' holds files no run of this script wrote"),
    ("fp8-without-packages", {}, ["--accelerator_kwargs", '{{"mixed_precision": "fp8"}}'],
     "accelerator_kwargs: mixed_precision 'fp8' needs transformer_engine or MS-AMP"),
    # accelerate refuses a value only when PPOTrainer builds the Accelerator, after the earlier run was set aside
    ("accelerate-refuses-at-trainer", {}, ["--accelerator_kwargs", '{{"kwargs_handlers": [1]}}'],
     "accelerate refused the run's settings while PPOTrainer set up (AssertionError"),
    ("eval-steps-no-file", {}, ["--eval_steps", "5"], "eval_steps 5 evaluates on held-out prompts, but no eval_file"),
    ("eval-samples-zero", {}, ["--eval_samples", "0"], "setting 'eval_samples' must be in [1, inf), got 0"),
    ("resume-changes-shape", {}, ["--use_peft", "true", "--resume_from_checkpoint", "latest"],
     "cannot resume from {out}/checkpoint-2: these settings differ from its run_config.yaml and change the "
     "model or optimizer shape (use_peft: False -> True)"),
]


@pytest.fixture(scope="module")
def finished_run(tiny, tmp_path_factory):
    """A finished 2-step run (the output_dir every case points at), its config, and a few broken models."""
    tmp = tmp_path_factory.mktemp("bad_input")
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": tiny["policy"], "dataset_name": tiny["data"], "min_text_length": 20,
        "reward_fn": "vader", "batch_size": 16, "mini_batch_size": 8, "steps": 2, "save_steps": 1,
        "output_dir": str(tmp / "run"), "sample_every": 0}))
    assert run_script("--config", config).returncode == 0
    build_classifier(tmp / "classifier")
    shutil.copytree(tiny["policy"], tmp / "truncated")
    weights = (tmp / "truncated" / "model.safetensors").read_bytes()
    (tmp / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    return tmp, config


def prepare(case, finished_run, tiny, tmp_path):
    name, files, argv, message = case
    run_dir, config = finished_run
    fill = lambda s: s.format(tmp=tmp_path, out=run_dir / "run", data=tiny["data"], policy=tiny["policy"],  # noqa
                             rewards=REWARDS)
    for file, content in files.items():
        path = tmp_path / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    for model in ("classifier", "truncated"):
        if f"{{tmp}}/{model}" in " ".join(argv):
            shutil.copytree(run_dir / model, tmp_path / model)
    argv = [fill(a) for a in argv]
    if "--config" not in argv:
        argv = ["--config", str(config), *argv]
    if not {"--resume_from_checkpoint", "--output_dir", "--overwrite_output_dir"} & set(argv):
        argv += ["--overwrite_output_dir"]  # a good run here would replace the earlier one: bad input must not
    return argv, fill(message)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, finished_run, tiny, tmp_path):
    out = finished_run[0] / "run"
    before = snapshot(out)
    argv, message = prepare(case, finished_run, tiny, tmp_path)
    with pytest.raises(RunError) as e:
        train_ppo.main(argv)
    assert e.value.code == 2
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)
    assert snapshot(out) == before
    assert len(list_checkpoints(out)) == 2


@pytest.mark.parametrize("name", ["yaml-empty", "lr-negative", "data-empty-jsonl", "model-classifier",
                                  "resume-changes-shape"])
def test_bad_input_as_a_user_sees_it(name, finished_run, tiny, tmp_path):
    argv, message = prepare(next(c for c in CASES if c[0] == name), finished_run, tiny, tmp_path)
    result = run_script(*argv, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: {message}" or \
        result.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
    assert "Traceback" not in result.stderr


def test_long_eval_prompt_is_cut_with_a_warning(tiny_config, tmp_path):
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("The film was\n" + "the plot was slow " * 100 + "and then\n")
    result = run_script("--config", tiny_config(steps=1, eval_file=str(held_out)))
    assert result.returncode == 0, result.stderr
    assert "1 eval_file prompt(s) are longer than 104 tokens" in result.stderr  # context 128 - 16 - 8
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["prompts"][0] == "The film was" and report["prompts"][1].endswith("and then")
