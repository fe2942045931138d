"""The model card: OUTPUT_DIR/README.md, huggingface_hub's ModelCard with what was tuned, on what, against what
reward, and the held-out evaluation."""

import json
from pathlib import Path

CARD_MARK = "<!-- written by train_ppo.py -->"


def write_model_card(output_dir, settings: dict, eval_md: str | None, best: dict | None = None) -> Path:
    """README.md in output_dir: huggingface_hub's ModelCard with what was tuned, on what, against what reward."""
    from huggingface_hub import ModelCard, ModelCardData

    base = settings["model_name_or_path"]
    base = str(Path(base).resolve()) if Path(base).is_dir() else base
    peft = settings["use_peft"]
    data = ModelCardData(base_model=None if Path(base).is_dir() else base, library_name="peft" if peft else
                         "transformers", tags=["trl", "ppo", "reinforcement-learning"])
    keys = ["learning_rate", "batch_size", "mini_batch_size", "ppo_epochs", "steps", "init_kl_coef", "adap_kl_ctrl",
            "target", "horizon", "seed"] + (["lora_r", "lora_alpha", "lora_target_modules"] if peft else [])
    table = "\n".join(f"| `{k}` | `{settings[k]}` |" for k in keys)
    load = (f"from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained("
            f"\"{Path(output_dir).resolve()}\")  # adapters on {base}" if peft else
            f"from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained("
            f"\"{Path(output_dir).resolve()}\")\n# with the PPO value head: trl.AutoModelForCausalLMWithValueHead")
    results = eval_md.split("\n", 2)[2] if eval_md else "No held-out evaluation (set `eval_file`).\n"
    if best:  # eval_steps: the evaluations during training, on the first eval_samples prompts
        results += (f"\n**Best held-out step within the KL target** (evaluations every `eval_steps` = "
                    f"{settings['eval_steps']} steps on {settings['eval_samples']} prompts): step {best['step']}, "
                    f"reward {best['eval/reward']:+.3f} at KL {best['eval/kl']:.2f} (target {settings['target']}); its "
                    f"checkpoint, `checkpoint-{best['step']}`, is kept.\n")
    fns, weights = settings["reward_fn"], settings.get("reward_weights") or []
    fns = fns if isinstance(fns, list) else [fns]
    reward = " + ".join(f"{w:g} x `{f}`" for f, w in zip(fns, weights)) if weights else " + ".join(f"`{f}`" for f in fns)
    reward += f" with `{json.dumps(settings['reward_kwargs'])}`"
    if settings.get("prompt_column"):
        prompts = (f"column `{settings['prompt_column']}` of `{settings['dataset_name']}`, whole"
                   + (" in the chat template" if settings.get("chat_template") else "")
                   + f"; responses end at EOS or after {settings['response_max_tokens']} tokens")
    else:
        prompts = (f"the first {settings['prompt_min_tokens']}-{settings['prompt_max_tokens']} tokens of the texts in "
                   f"`{settings['dataset_name']}` (column `{settings['text_column']}`); responses of "
                   f"{settings['response_min_tokens']}-{settings['response_max_tokens']} tokens, sampled from the "
                   "policy (" + ("one length drawn per batch" if settings['one_length_per_batch'] else
                                 "a length drawn per response") + ")")
    card = ModelCard(f"""---
{data.to_yaml()}
---
{CARD_MARK}
# PPO-tuned {Path(base).name}

`{base}` fine-tuned with PPO (TRL 0.11.4 `PPOTrainer`, adaptive KL control) by `train_ppo.py`
{"as LoRA adapters (the reference is the base model with the adapters off)" if peft else "(all weights)"}.

- **Reward:** {reward}
- **Prompts:** {prompts}

| setting | value |
|---|---|
{table}

Every setting is in `run_config.yaml` (a valid `--config`); one row per PPO step in `metrics.jsonl`.

## Held-out evaluation

{results}
![training curves](training_curves.png)

## Load

```python
{load}
```
""")
    path = Path(output_dir, "README.md")
    card.save(path)
    return path
