"""DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes (DS_ACCELERATOR=cpu, gloo), launched with the settings of the
shipped accelerate configs: training, the saved policy, the held-out report, and an exact resume after SIGTERM."""

import signal

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import GPU_MACHINE, ROOT, run_launched, sigterm_to_rank_1_after, snapshot
from ppo_lm.checkpoints import list_checkpoints
from ppo_lm.metrics import read_metrics

pytest.importorskip("deepspeed")


def deepspeed_env(stage: int) -> dict:
    """What `accelerate launch --config_file configs/accelerate/deepspeed_zeroN.yaml` sets for the script, on CPU
    processes: the config's DeepSpeed settings, DS_ACCELERATOR=cpu and no mixed precision (bf16 is for GPUs). On the
    faked GPU machine: CPU processes must leave a GPU alone (the script hides it when DS_ACCELERATOR=cpu)."""
    config = yaml.safe_load((ROOT / "configs" / "accelerate" / f"deepspeed_zero{stage}.yaml").read_text())
    ds = config["deepspeed_config"]
    assert config["distributed_type"] == "DEEPSPEED" and ds["zero_stage"] == stage
    return {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(stage),
            "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": ds["offload_optimizer_device"],
            "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": ds["offload_param_device"],
            "ACCELERATE_DEEPSPEED_ZERO3_INIT": str(ds["zero3_init_flag"]).lower(),
            "ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": None, "DS_ACCELERATOR": "cpu",
            **GPU_MACHINE}


def run_two(stage, config, *argv, on_start=None):
    return run_launched(2, config, *argv, env=deepspeed_env(stage), on_start=on_start)


@pytest.mark.parametrize("stage, lora", [(2, False), (3, True)], ids=["zero2", "zero3-lora"])
def test_deepspeed_trains_saves_and_evaluates(tiny_config, tmp_path, stage, lora):
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("The film was\nThe plot\nThe acting felt\n")
    config = tiny_config(reward_fn="vader", batch_size=8, mini_batch_size=4, steps=3, save_steps=2,
                         eval_file=str(held_out), **({"use_peft": True, "lora_r": 4} if lora else {}))
    codes, stderr = run_two(stage, config)
    assert codes == [0, 0], stderr
    out = tmp_path / "run"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["env/episodes"] == 16 for r in rows)  # 8 a process
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    shards = list((out / "checkpoint-3" / "deepspeed" / "state").glob("zero_pp_rank_*_optim_states.pt"))
    assert len(shards) == 2  # each process saved its own shard of the optimizer state
    assert "held-out vader" in stderr[0] and (out / "eval.md").is_file()
    weights = load_file(out / ("adapter_model.safetensors" if lora else "model.safetensors"))
    assert weights and all(t.numel() > 0 for t in weights.values())  # gathered, not ZeRO-3's empty placeholders
    if not lora:
        assert AutoModelForCausalLM.from_pretrained(out).config.n_layer == 2


def test_zero3_sigterm_and_resume_is_exact(tiny_config, tmp_path):
    """SIGTERM to rank 1 under ZeRO-3: both processes checkpoint the same step (each its shard), and the resumed
    run logs the same rows as an uninterrupted one, and the same held-out report."""
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("The film was\nThe plot\n")
    config = tiny_config(reward_fn="vader", batch_size=8, mini_batch_size=4, steps=6, save_steps=100,
                         learning_rate=1e-3, eval_file=str(held_out))
    out = tmp_path / "run"

    codes, stderr = run_two(3, config, on_start=sigterm_to_rank_1_after(2, out))
    assert codes == [128 + signal.SIGTERM] * 2, stderr
    step = max(r["step"] for r in read_metrics(out / "metrics.jsonl"))
    assert 2 <= step < 6
    assert [p.name for p in list_checkpoints(out)] == [f"checkpoint-{step}"]

    before = snapshot(out)
    codes, stderr = run_launched(1, config, "--resume_from_checkpoint", "latest", env=deepspeed_env(3))
    assert codes == [2], stderr  # one process cannot take two ZeRO shards: refused, the run as it was
    assert stderr[0].strip().splitlines()[-1] == (
        f"error: resume_from_checkpoint '{out}/checkpoint-{step}': it was saved by a DeepSpeed ZeRO run on 2 "
        "process(es), each with its shard of the optimizer state, and this run has 1; DeepSpeed cannot re-partition "
        "the shards: resume on 2 process(es), launched as that run was")
    assert snapshot(out) == before

    codes, stderr = run_two(3, config, "--resume_from_checkpoint", "latest")
    assert codes == [0, 0], stderr
    codes, stderr = run_two(3, config, "--output_dir", tmp_path / "uninterrupted")
    assert codes == [0, 0], stderr
    resumed = read_metrics(out / "metrics.jsonl")
    uninterrupted = read_metrics(tmp_path / "uninterrupted" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(resumed[step:], uninterrupted[step:]):
        for key in ["env/reward_mean", "objective/kl", "objective/kl_coef", "ppo/loss/total", "ppo/policy/approxkl"]:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert (out / "eval.md").read_text() == (tmp_path / "uninterrupted" / "eval.md").read_text()
    final = load_file(out / "model.safetensors")
    assert all(torch.equal(final[k], v) for k, v in load_file(tmp_path / "uninterrupted" / "model.safetensors").items())


def test_unsupported_deepspeed_features_are_refused(tiny_config, tmp_path, monkeypatch):
    import train_ppo
    from ppo_lm.errors import RunError

    for key, value in deepspeed_env(2).items():
        monkeypatch.setenv(key, value) if value is not None else monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu")
    with pytest.raises(RunError, match="^DeepSpeed offload_optimizer_device 'cpu' is not supported"):
        train_ppo.main(["--config", str(tiny_config())])
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "1")
    with pytest.raises(RunError, match="^DeepSpeed ZeRO stage 1 is not supported here"):
        train_ppo.main(["--config", str(tiny_config())])
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(RunError, match="^save_merged is not supported under ZeRO-3"):
        train_ppo.main(["--config", str(tiny_config(use_peft=True, save_merged=True))])
    assert not (tmp_path / "run").exists()
