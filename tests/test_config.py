"""Settings: defaults < YAML < command line, unknown keys and bad values rejected in one sentence."""

import pytest
from trl.commands.cli_utils import TrlParser

from ppo_lm.errors import RunError
from train_ppo import CheckedModelConfig, CheckedPPOConfig, ScriptArguments
from ppo_lm.validation import parse_config


def parse(*argv):
    """(ScriptArguments, PPOConfig, ModelConfig) from a command line, as train_ppo.main parses it."""
    return parse_config(TrlParser((ScriptArguments, CheckedPPOConfig, CheckedModelConfig)), [str(a) for a in argv])


def test_defaults_yaml_cli_precedence(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 2.0e-5\nbatch_size: 64\nmini_batch_size: 16\nreward_fn: vader\n"
                   "reward_kwargs: {a: 1}\nresponse_max_tokens: 12\n")
    args, config, model_args = parse("--config", cfg, "--learning_rate", "1e-5", "--reward_kwargs", '{"b": 2}')
    assert config.learning_rate == 1e-5  # CLI beats YAML
    assert config.batch_size == 64 and args.reward_fn == ["vader"] and args.response_max_tokens == 12  # YAML
    assert args.reward_kwargs == {"b": 2}
    assert config.init_kl_coef == 0.2 and config.adap_kl_ctrl and config.target == 6  # defaults
    assert (args.top_k, args.top_p, args.do_sample, args.min_length) == (0, 1.0, True, -1)


def test_shipped_configs_parse():
    from pathlib import Path

    for path in sorted(Path(__file__).parents[1].glob("configs/*.yaml")):
        args, config, model_args = parse("--config", path)
        assert config.steps >= 1 and args.output_dir


@pytest.mark.parametrize("argv, message", [
    (["--learnin_rate", "1e-5"], "unknown setting 'learnin_rate': did you mean 'learning_rate'?"),
    (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["--batch_size", "10", "--mini_batch_size", "4"],
     "batch_size must be a multiple of mini_batch_size * gradient_accumulation_steps (got 10 / 4 = 2.5)"),
    (["--config", "nowhere.yaml"], "config file 'nowhere.yaml' not found"),
    (["--torch_dtype", "float8"], "argument --torch_dtype/--torch-dtype: invalid choice: 'float8'"),
])
def test_bad_command_line(argv, message):
    with pytest.raises(RunError) as e:
        parse(*argv)
    assert str(e.value).startswith(message) and e.value.code == 2 and "\n" not in str(e.value)


@pytest.mark.parametrize("yaml_text, message", [
    ("learnin_rate: 1.0e-5\n", "unknown setting 'learnin_rate': did you mean 'learning_rate'?"),
    ("steps: 1.5\n", "setting 'steps' must be a int, got 1.5"),
    ("reward_fn: 3\n", "setting 'reward_fn' must be a list of names, got 3"),
    ("adap_kl_ctrl: maybe\n", "argument --adap_kl_ctrl/--adap-kl-ctrl: Truthy value expected: got maybe"),
    ("torch_dtype: float8\n", "setting 'torch_dtype' must be one of"),
])
def test_bad_yaml(tmp_path, yaml_text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(RunError) as e:
        parse("--config", cfg)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_dict_settings_take_json_and_config_takes_equals(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 7\n")
    args, config, model_args = parse(f"--config={cfg}", "--accelerator_kwargs", '{"mixed_precision": "bf16"}',
                         "--tracker_kwargs", '{"wandb": {"name": "x"}}', "--project_kwargs", '{"logging_dir": "l"}')
    assert config.steps == 7
    assert config.accelerator_kwargs == {"mixed_precision": "bf16"}
    assert config.tracker_kwargs == {"wandb": {"name": "x"}} and config.project_kwargs == {"logging_dir": "l"}


def test_run_config_records_what_the_run_used(tiny_config, tmp_path):
    """run_config.yaml leaves out PPOConfig's fields this script ignores (model_name: gpt2, query_dataset: imdb, ...)
    and is itself a valid --config."""
    import yaml

    from conftest import run_script

    result = run_script("--config", tiny_config(steps=1, reward_fn="vader"))
    assert result.returncode == 0, result.stderr
    saved = yaml.safe_load((tmp_path / "run" / "run_config.yaml").read_text())
    for ignored in ["model_name", "query_dataset", "reward_model", "remove_unused_columns", "forward_batch_size"]:
        assert ignored not in saved
    assert saved["reward_fn"] == ["vader"] and saved["steps"] == 1
    args, config, model_args = parse("--config", tmp_path / "run" / "run_config.yaml")
    assert model_args.model_name_or_path == saved["model_name_or_path"] and config.steps == 1


def test_tracker_config_has_no_ignored_fields():
    """PPOTrainer logs config.to_dict() to the tracker: the ignored PPOConfig fields are not in it."""
    args, config, model_args = parse("--model_name_or_path", "some/model")
    shown = config.to_dict()
    assert "remove_unused_columns" not in shown and "forward_batch_size" not in shown and "compare_steps" not in shown
    assert shown["learning_rate"] == config.learning_rate and "model_name" in shown
