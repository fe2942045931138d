#!/usr/bin/env python
"""Episodes per second of three PPO loops doing the same PPO work: ours (train_ppo.py itself), TRL's example
script (v0.11.4 examples/scripts/ppo.py) and TRL's sentiment notebook (one generate call per sequence).

Same models, prompts, seed and PPO settings for all: batch 128, mini-batch 128 (TRL's default), 4 PPO epochs,
prompts 2-8 tokens, responses 4-16 tokens, adaptive KL, reward = reward.sentiment_classifier. Models are built
locally with random weights (nothing is downloaded): --size gpt2 is GPT-2 small (124M, vocab 50257) + DistilBERT
base (66M); --size tiny is 2-layer versions of both, for a CPU.

--size smollm2 is the default job itself (configs/smollm2_sentiment.yaml: SmolLM2-135M with LoRA r16, the MiniLM
reward model, Rotten Tomatoes prompts, batch 32, mini-batch 16, 2 PPO epochs; built by `make train`): ours in fp32,
with bf16 autocast and with one_length_per_batch, against the careful TRL loop and the floors. The TRL example and
notebook are left out.

--size smollm2 --to_target: time to a better policy. Ours (the shipped config itself) and the careful TRL loop
(same models, prompts, reward, batch, learning and KL settings; TRL's controller, which has no floor) train in one
run and are evaluated at the same steps on the same held-out prompts (the first --eval_samples of the config's
eval_file, the same sampling seed and response lengths, with the same evaluation code). It prints the training
time (generate + score + PPO step; evaluation excluded) each needs to reach a held-out reward gain of +0.5 and
+1.0 with held-out KL <= target.

    python bench/bench_ppo.py --size tiny                   # CPU, a few minutes
    python bench/bench_ppo.py --size smollm2 --steps 3      # CPU, the real models, about 5 minutes
    python bench/bench_ppo.py --size smollm2 --to_target --eval_every 6   # CPU, about 25 minutes
    python bench/bench_ppo.py --size gpt2 --device cuda     # one GPU
    python bench/bench_ppo.py --size gpt2 --epoch           # one GPU: a whole run of configs/gpt2_imdb.yaml

--epoch: one training run as a user starts it, nothing else: `train_ppo.py --config configs/gpt2_imdb.yaml` (194
steps of 128, one IMDB epoch) with the locally built models and reviews in place of the Hub's, and
bf16 autocast on a GPU (what configs/accelerate/single_gpu.yaml sets). It prints the wall time of the whole
run (start-up, checkpoints and model card included) and the per-step figures from its metrics.jsonl.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from accelerate.state import AcceleratorState  # noqa: E402
import yaml  # noqa: E402
from trl import PPOConfig, PPOTrainer, set_seed  # noqa: E402
from trl.core import LengthSampler  # noqa: E402

import reward  # noqa: E402
import train_ppo  # noqa: E402
from ppo_lm.models import load_model  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from ppo_lm.tiny_models import build_classifier, build_policy, write_dataset  # noqa: E402
from ppo_lm.data import batch_indices, read_eval_prompts  # noqa: E402
from ppo_lm.evaluation import DuringTraining  # noqa: E402
from ppo_lm.validation import HONEST_SAMPLING  # noqa: E402
from ppo_lm.metrics import read_metrics  # noqa: E402

SETTINGS = {"batch_size": 128, "mini_batch_size": 128, "ppo_epochs": 4, "learning_rate": 1.41e-5, "seed": 0,
            "prompt_min_tokens": 2, "prompt_max_tokens": 8, "response_min_tokens": 4, "response_max_tokens": 16}
# --size smollm2: the default job's PPO settings and LoRA (configs/smollm2_sentiment.yaml)
SMOLLM2 = {"batch_size": 32, "mini_batch_size": 16, "ppo_epochs": 2, "learning_rate": 3e-4}
LORA = {"use_peft": True, "lora_r": 16, "lora_alpha": 32}
REAL = {"policy": ROOT / "models/smollm2-135m", "classifier": ROOT / "models/sentiment-minilm",
        "data": ROOT / "data/rt_snippets/train.jsonl"}
GENERATION = {"min_length": -1, "top_k": 0, "top_p": 1.0, "do_sample": True}
CONFIG = ROOT / "configs/smollm2_sentiment.yaml"


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gb() -> float:
    if not torch.cuda.is_available():
        return float("nan")
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return peak


def fresh_accelerator_state():
    """accelerate keeps one AcceleratorState per process; each loop (fp32 or bf16) starts from a clean one."""
    AcceleratorState._reset_state(reset_partial_state=True)


def run_ours(paths, steps: int, device: str, out: Path, lora: dict, precision: str = "no", **settings) -> list[dict]:
    """train_ppo.py's own main(), on a config with the shared settings (and `settings`); times come from its
    metrics.jsonl."""
    fresh_accelerator_state()
    config = {**SETTINGS, **lora, **settings, "model_name_or_path": paths["policy"], "dataset_name": paths["data"],
              "min_text_length": 20, "reward_fn": "sentiment_classifier",
              "reward_kwargs": {"model": paths["classifier"], "batch_size": 128}, "steps": steps,
              "output_dir": str(out), "save_steps": 10**6, "sample_every": 0,
              "accelerator_kwargs": {"cpu": device == "cpu", "mixed_precision": precision}}
    (out.parent / "ours.yaml").write_text(yaml.safe_dump(config))
    train_ppo.main(["--config", str(out.parent / "ours.yaml")])
    return [{"generate": r["time/generate"], "score": r["time/score"], "step": r["time/ppo_step"],
             "memory": r.get("memory/peak_gb", float("nan"))} for r in read_metrics(out / "metrics.jsonl")]


def make_trainer(paths, device: str, lora: dict):
    """A fresh PPOTrainer with the shared settings, and the same prompts train_ppo.py uses; with LoRA the
    reference is the policy with its adapters off, as in train_ppo.py."""
    fresh_accelerator_state()
    set_seed(SETTINGS["seed"])
    args = train_ppo.ScriptArguments(dataset_name=paths["data"], min_text_length=20,
                                     **{k: v for k, v in SETTINGS.items() if "tokens" in k})
    model_args = train_ppo.CheckedModelConfig(paths["policy"], **lora)
    config = PPOConfig(**{k: v for k, v in SETTINGS.items() if "tokens" not in k},
                       accelerator_kwargs={"cpu": device == "cpu"})
    tokenizer = AutoTokenizer.from_pretrained(paths["policy"])
    tokenizer.pad_token = tokenizer.eos_token
    policy = load_model(paths["policy"], "policy", model_args, peft=bool(lora))
    reference = None if lora else load_model(paths["policy"], "reference", model_args)
    trainer = PPOTrainer(config, policy, reference, tokenizer)
    return trainer, tokenizer, train_ppo.load_prompts(args, tokenizer, SETTINGS["seed"])


def batches(trainer, dataset, steps: int):
    for step in range(1, steps + 1):
        batch = dataset[batch_indices(len(dataset), SETTINGS["batch_size"], step, SETTINGS["seed"])]
        yield batch, [torch.tensor(ids, device=trainer.accelerator.device) for ids in batch["input_ids"]]


def timed_steps(paths, steps: int, device: str, lora: dict, generate, score_batch: int = 16,
                held_out: DuringTraining | None = None) -> list[dict]:
    """The generate -> score -> step loop of TRL's own examples, timed per phase. `generate(trainer, tokenizer,
    queries)` returns (responses, reference responses or None); rewards come from the pipeline with batch
    `score_batch` (16 in TRL's example and notebook). `held_out`: evaluate every held_out.every steps (not timed)."""
    trainer, tokenizer, dataset = make_trainer(paths, device, lora)
    if held_out:
        held_out.settings["tokenizer"] = tokenizer
        held_out.settings["generation_kwargs"]["pad_token_id"] = tokenizer.pad_token_id
    score = lambda prompts, texts: reward.sentiment_classifier(  # noqa: E731
        prompts, texts, model=paths["classifier"], batch_size=score_batch)
    times = []
    for step, (batch, queries) in enumerate(batches(trainer, dataset, steps), 1):
        t0 = time.perf_counter()
        responses, ref_responses = generate(trainer, tokenizer, queries)
        texts = tokenizer.batch_decode(responses)
        sync()
        t1 = time.perf_counter()
        scores = score(batch["query"], texts)
        if ref_responses is not None:
            score(batch["query"], tokenizer.batch_decode(ref_responses))
        t2 = time.perf_counter()
        trainer.step(queries, responses, [torch.tensor(s) for s in scores])
        sync()
        times.append({"generate": t1 - t0, "score": t2 - t1, "step": time.perf_counter() - t2, "memory": peak_gb()})
        if held_out and held_out.due(step):
            times[-1] |= held_out.run(trainer, 0.0)
    return times


RESPONSE_LENGTH = LengthSampler(SETTINGS["response_min_tokens"], SETTINGS["response_max_tokens"] + 1)


def trl_example_generate(trainer, tokenizer, queries):
    """examples/scripts/ppo.py: PPOTrainer.generate in its default chunks of 4 (one sampled length per chunk),
    plus a reference response for every prompt."""
    return trainer.generate(queries, length_sampler=RESPONSE_LENGTH, return_prompt=False,
                            generate_ref_response=True, pad_token_id=tokenizer.eos_token_id, **GENERATION)


def careful_trl_generate(trainer, tokenizer, queries):
    """What a careful TRL user writes: TRL's example with the whole batch per generate call
    (`batch_size=len(queries)`, 128 at TRL's default batch) and no reference responses; pipeline batch 128."""
    return trainer.generate(queries, batch_size=len(queries), length_sampler=RESPONSE_LENGTH, return_prompt=False,
                            pad_token_id=tokenizer.eos_token_id, **GENERATION), None


def notebook_generate(trainer, tokenizer, queries):
    """gpt2-sentiment.ipynb: one generate call per sequence."""
    responses = []
    for query in queries:
        n = RESPONSE_LENGTH()
        response = trainer.generate(query, max_new_tokens=n, pad_token_id=tokenizer.eos_token_id, **GENERATION)
        responses.append(response.squeeze()[-n:])
    return responses, None


def bare_limits(paths, device: str, lora: dict, repeats: int = 3) -> dict:
    """The floor for each phase: one bare generate() of the batch to the longest length, and one bare
    forward+backward of the same tokens per PPO epoch plus a reference forward (adapters off with LoRA)."""
    trainer, tokenizer, dataset = make_trainer(paths, device, lora)
    model = trainer.accelerator.unwrap_model(trainer.model).pretrained_model
    if lora:
        reference, reference_mode = model, model.disable_adapter
    else:
        reference, reference_mode = trainer.accelerator.unwrap_model(trainer.ref_model).pretrained_model, nullcontext
    batch, queries = next(batches(trainer, dataset, 1))
    tokenizer.padding_side = "left"
    padded = tokenizer.pad({"input_ids": batch["input_ids"]}, return_tensors="pt").to(trainer.accelerator.device)
    generate, train = [], []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**padded, max_new_tokens=SETTINGS["response_max_tokens"],
                                 pad_token_id=tokenizer.eos_token_id, **GENERATION)
        sync()
        t1 = time.perf_counter()
        mask = torch.ones_like(out)
        with torch.no_grad(), reference_mode():
            reference(input_ids=out, attention_mask=mask)
        for _ in range(SETTINGS["ppo_epochs"]):
            model(input_ids=out, attention_mask=mask).logits.float().log_softmax(-1).mean().backward()
        model.zero_grad()
        sync()
        generate.append(t1 - t0)
        train.append(time.perf_counter() - t1)
    return {"generate": min(generate), "step": min(train)}


def time_to_target(opts, work: Path) -> None:
    """Ours (train_ppo.py on the shipped config) and the careful TRL loop on the same settings, evaluated at the same
    steps on the same held-out prompts; prints the training time each takes to reach each gain within the KL target."""
    config = yaml.safe_load(CONFIG.read_text())
    opts.max_steps = opts.max_steps or config["steps"]
    paths = {k: str(p) for k, p in REAL.items()}
    keys = ["batch_size", "mini_batch_size", "ppo_epochs", "learning_rate", "init_kl_coef", "target", "horizon"]
    SETTINGS.update({k: config[k] for k in keys} | {"seed": opts.seed})
    SETTINGS.update({k: config[k] for k in config if k.endswith("_tokens")})
    lora = {k: config[k] for k in LORA}
    fresh_accelerator_state()
    out = work / "ours"
    train_ppo.main(["--config", str(CONFIG), "--output_dir", str(out), "--steps", str(opts.max_steps),
                    "--seed", str(opts.seed), "--eval_steps", str(opts.eval_every),
                    "--eval_samples", str(opts.eval_samples), "--save_steps", str(10**6), "--sample_every", "0",
                    "--save_merged", "false"])
    ours = read_metrics(out / "metrics.jsonl")
    settings = {"tokenizer": None, "scorers": {config["reward_fn"]: reward.sentiment_classifier},
                "reward_kwargs": config["reward_kwargs"] | {"model": paths["classifier"]}, "batch_size": 128,
                "seed": opts.seed,
                "generation_kwargs": HONEST_SAMPLING | {"max_new_tokens": config["response_max_tokens"]},
                "response_lengths": (config["response_min_tokens"], config["response_max_tokens"])}
    prompts = read_eval_prompts(str(ROOT / config["eval_file"]))[: opts.eval_samples]
    held_out = DuringTraining(opts.eval_every, prompts, settings, config["target"], [])
    careful = [row | {"time/generate": row["generate"], "time/score": row["score"], "time/ppo_step": row["step"]}
               for row in timed_steps(paths, opts.max_steps, opts.device, lora, careful_trl_generate,
                                      score_batch=128, held_out=held_out)]  # in metrics.jsonl's names, as ours

    def points(rows):  # (step, training seconds so far, held-out gain, held-out KL) at each evaluation
        elapsed, out = 0.0, []
        for step, row in enumerate(rows, 1):
            elapsed += row["time/generate"] + row["time/score"] + row["time/ppo_step"]
            if "eval/reward" in row:
                out.append((step, elapsed, row["eval/reward"] - row["eval/reward_reference"], row["eval/kl"]))
        return out

    def reached(pts, gain):
        hit = next((p for p in pts if p[2] >= gain and p[3] <= config["target"]), None)
        return f"{hit[1]:.0f} s (step {hit[0]})" if hit else f"not in {opts.max_steps} steps"

    device = torch.cuda.get_device_name() if opts.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    lines = [f"### Time to target: the default job on {device}", "",
             f"{time.strftime('%Y-%m-%d')}; seed {opts.seed}; {opts.max_steps} steps each; held-out evaluation every "
             f"{opts.eval_every} steps on the first {opts.eval_samples} held-out prompts; KL target {config['target']}",
             "", "| loop | s/step | episodes/s | to gain +0.5 | to gain +1.0 | last evaluation: gain, KL |",
             "|---|---|---|---|---|---|"]
    results = {}
    for name, rows in [("ours (train_ppo.py, shipped config)", ours),
                       ("careful TRL loop (same settings, TRL's KL controller)", careful)]:
        pts = points(rows)
        per_step = pts[-1][1] / len(rows) if pts else float("nan")
        results[name] = (pts, per_step)
        lines.append(f"| {name} | {per_step:.2f} | {SETTINGS['batch_size'] / per_step:.2f} | {reached(pts, 0.5)} | "
                     f"{reached(pts, 1.0)} | {pts[-1][2]:+.3f}, {pts[-1][3]:.2f} |")
    lines += ["", "Held-out points (step: training seconds, gain, KL):", ""]
    for name, (pts, _) in results.items():
        lines.append(f"- {name}: " + "; ".join(f"{s}: {t:.0f} s, {g:+.3f}, {k:.2f}" for s, t, g, k in pts))
    table = "\n".join(lines)
    print(table)
    if opts.out:
        opts.out.write_text(table + "\n")


def one_epoch(opts, work: Path) -> None:
    """configs/gpt2_imdb.yaml as a user runs it, on locally built models of --size and generated reviews."""
    config = yaml.safe_load((ROOT / "configs/gpt2_imdb.yaml").read_text())
    n = config["batch_size"] * opts.epoch_steps
    config.pop("dataset_split")  # a local file has no splits
    config |= {"model_name_or_path": str(build_policy(work / "policy", size=opts.size)),
               "dataset_name": str(write_dataset(work / "reviews.jsonl", n=n)), "min_text_length": 20,
               "steps": opts.epoch_steps, "output_dir": str(work / "run")}
    config["reward_kwargs"]["model"] = str(build_classifier(work / "classifier",
                                                            size="distilbert" if opts.size == "gpt2" else "tiny"))
    if opts.device == "cuda":  # what configs/accelerate/single_gpu.yaml sets for `accelerate launch`
        config["accelerator_kwargs"] = {"mixed_precision": "bf16"}
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, str(ROOT / "train_ppo.py"), "--config", str(work / "run.yaml")]
    print("$", " ".join(command), flush=True)
    t0 = time.perf_counter()
    run = subprocess.Popen(command, cwd=ROOT)
    try:  # past the time limit, a SIGTERM: the run finishes its step, checkpoints it and stops
        code = run.wait(timeout=opts.epoch_limit_s)
    except subprocess.TimeoutExpired:
        run.terminate()
        code = run.wait()
    wall = time.perf_counter() - t0
    rows = read_metrics(work / "run" / "metrics.jsonl")
    if not rows:
        raise SystemExit(f"error: the run wrote no metrics rows (exit code {code})")
    timed = rows[1:] or rows  # step 1 includes CUDA warm-up
    mean = lambda key: statistics.mean(r[key] for r in timed)  # noqa: E731
    per_step = mean("time/generate") + mean("time/score") + mean("time/ppo_step")
    memory = [r.get("memory/peak_gb", float("nan")) for r in rows]
    device = torch.cuda.get_device_name() if opts.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    stopped = f" (stopped by SIGTERM at the {opts.epoch_limit_s:.0f} s limit)" if len(rows) < opts.epoch_steps else ""
    lines = [f"### One run of configs/gpt2_imdb.yaml ({opts.size}-size models built locally) on {device}", "",
             f"{time.strftime('%Y-%m-%d')}; torch {torch.__version__}; python train_ppo.py"
             f"{', bf16 autocast (as configs/accelerate/single_gpu.yaml)' if opts.device == 'cuda' else ''}; exit code "
             f"{code}; {len(rows)} of {opts.epoch_steps} steps of {config['batch_size']}{stopped}",
             "",
             f"- wall time of the whole run (start-up, checkpoints, model card included): {wall:.0f} s "
             f"({wall / 60:.1f} min)",
             f"- per step, steps 2-{len(rows)}: {per_step:.3f} s = generate {mean('time/generate'):.3f} + score "
             f"{mean('time/score'):.3f} + PPO step {mean('time/ppo_step'):.3f}; "
             f"{config['batch_size'] / per_step:.0f} episodes/s",
             f"- peak GPU memory: step 5 {memory[min(4, len(memory) - 1)]:.2f} GB, last step {memory[-1]:.2f} GB",
             f"- training reward (random-weight classifier, so not a quality figure): step 1 "
             f"{rows[0]['env/reward_mean']:+.3f}, last {rows[-1]['env/reward_mean']:+.3f}; KL last "
             f"{rows[-1]['objective/kl']:.2f}, beta last {rows[-1].get('objective/kl_coef', float('nan')):.3f}"]
    table = "\n".join(lines)
    print(table)
    if opts.out:
        opts.out.write_text(table + "\n")


def summarise(name: str, times: list[dict], warmup: int) -> dict:
    timed = times[warmup:]
    mean = lambda key: statistics.mean(t[key] for t in timed)  # noqa: E731
    per_step = mean("generate") + mean("score") + mean("step")
    return {"loop": name, "episodes_per_s": SETTINGS["batch_size"] / per_step, "step_s": per_step,
            "generate_s": mean("generate"), "score_s": mean("score"), "ppo_step_s": mean("step"),
            "mem_step5": times[min(4, len(times) - 1)]["memory"], "mem_last": times[-1]["memory"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "gpt2", "smollm2"], default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--notebook_steps", type=int, default=None, help="timed steps for the (slow) notebook loop")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    parser.add_argument("--to_target", action="store_true", help="with --size smollm2: time to a held-out gain")
    parser.add_argument("--max_steps", type=int, default=None, help="--to_target: steps per loop (default: the "
                        "shipped config's steps)")
    parser.add_argument("--eval_every", type=int, default=6, help="--to_target: steps between evaluations")
    parser.add_argument("--eval_samples", type=int, default=64, help="--to_target: held-out prompts evaluated")
    parser.add_argument("--seed", type=int, default=0, help="--to_target: the seed of both loops")
    parser.add_argument("--epoch", action="store_true", help="one run of configs/gpt2_imdb.yaml, as a user starts it")
    parser.add_argument("--epoch_steps", type=int, default=194, help="--epoch: steps (194 = one IMDB epoch)")
    parser.add_argument("--epoch_limit_s", type=float, default=None,
                        help="--epoch: past this many seconds the run is stopped cleanly (SIGTERM)")
    opts = parser.parse_args()
    if opts.to_target and opts.size != "smollm2":
        parser.error("--to_target measures the default job: use it with --size smollm2")
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no GPU; use --device cpu")

    if opts.epoch and opts.size == "smollm2":
        parser.error("--epoch runs configs/gpt2_imdb.yaml: use it with --size gpt2 (or tiny)")
    work = Path(tempfile.mkdtemp(prefix="bench_ppo_"))
    if opts.epoch:
        return one_epoch(opts, work)
    steps = opts.warmup + opts.steps
    run = lambda name, times: summarise(name, times, opts.warmup)  # noqa: E731
    if opts.size == "smollm2":
        missing = [str(p) for p in REAL.values() if not p.exists()]
        if missing:
            raise SystemExit(f"error: {', '.join(missing)} missing: `make train` builds them (or the Makefile's "
                             "model and data targets)")
        if opts.to_target:
            return time_to_target(opts, work)
        SETTINGS.update(SMOLLM2)
        paths, lora = {k: str(p) for k, p in REAL.items()}, LORA
        results = [run("ours (train_ppo.py), fp32", run_ours(paths, steps, opts.device, work / "ours", lora)),
                   run("ours, bf16 autocast", run_ours(paths, steps, opts.device, work / "bf16", lora, "bf16")),
                   run("ours, one_length_per_batch", run_ours(paths, steps, opts.device, work / "one_length", lora,
                                                              one_length_per_batch=True))]
        ours, bf16, one_length = results
    else:
        paths, lora = {"policy": str(build_policy(work / "policy", size=opts.size)),
                       "classifier": str(build_classifier(work / "classifier",
                                                          size="distilbert" if opts.size == "gpt2" else "tiny")),
                       "data": str(write_dataset(work / "reviews.jsonl", n=SETTINGS["batch_size"] * 8))}, {}
        results = [run("ours (train_ppo.py)", run_ours(paths, steps, opts.device, work / "ours", lora)),
                   run("TRL example script", timed_steps(paths, steps, opts.device, lora, trl_example_generate)),
                   run("TRL notebook", timed_steps(paths, opts.warmup + (opts.notebook_steps or opts.steps),
                                                   opts.device, lora, notebook_generate))]
        ours, example, notebook = results
    careful = run(f"careful TRL loop (generate batch {SETTINGS['batch_size']}, no ref. responses)",
                  timed_steps(paths, steps, opts.device, lora, careful_trl_generate, score_batch=128))
    results.append(careful)
    bare = bare_limits(paths, opts.device, lora)

    device = torch.cuda.get_device_name() if opts.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    import transformers
    import trl

    lines = [f"### {opts.size} models on {device}", "",
             f"{time.strftime('%Y-%m-%d')}; torch {torch.__version__}, transformers {transformers.__version__}, "
             f"trl {trl.__version__}, python {platform.python_version()}; batch {SETTINGS['batch_size']}, "
             f"mini-batch {SETTINGS['mini_batch_size']}, {SETTINGS['ppo_epochs']} PPO epochs"
             f"{', LoRA r16' if lora else ''}; {opts.steps} timed steps after {opts.warmup} warm-up", "",
             "| loop | episodes/s | s/step | generate s | score s | PPO step s | peak GB step 5 | peak GB last |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['loop']} | {r['episodes_per_s']:.1f} | {r['step_s']:.2f} | {r['generate_s']:.2f} | "
                     f"{r['score_s']:.2f} | {r['ppo_step_s']:.2f} | {r['mem_step5']:.2f} | {r['mem_last']:.2f} |")
    lines += [""]
    if opts.size != "smollm2":
        lines += [f"- ours / TRL example: **{ours['episodes_per_s'] / example['episodes_per_s']:.2f}x** episodes/s",
                  f"- ours / notebook: **{ours['episodes_per_s'] / notebook['episodes_per_s']:.2f}x** episodes/s"]
    lines += [f"- ours / careful TRL loop: **{ours['episodes_per_s'] / careful['episodes_per_s']:.2f}x** episodes/s",
              f"- ours' generation / bare `generate` of the same batch: "
              f"{ours['generate_s'] / bare['generate']:.2f}x ({ours['generate_s']:.2f} s vs {bare['generate']:.2f} s)",
              f"- ours' PPO step / bare forward+backward x{SETTINGS['ppo_epochs']} + reference forward: "
              f"{ours['ppo_step_s'] / bare['step']:.2f}x ({ours['ppo_step_s']:.2f} s vs {bare['step']:.2f} s)"]
    if opts.size == "smollm2":
        lines += [f"- bf16 autocast / fp32, seconds: generate {bf16['generate_s'] / ours['generate_s']:.2f}x, "
                  f"PPO step {bf16['ppo_step_s'] / ours['ppo_step_s']:.2f}x, whole step "
                  f"{bf16['step_s'] / ours['step_s']:.2f}x",
                  f"- ours with one_length_per_batch / careful TRL loop: "
                  f"**{one_length['episodes_per_s'] / careful['episodes_per_s']:.2f}x** episodes/s; / ours: "
                  f"{one_length['episodes_per_s'] / ours['episodes_per_s']:.2f}x"]
    else:
        lines.append(f"- one IMDB epoch (194 steps of 128) at ours' speed: {194 * ours['step_s'] / 60:.1f} min")
    if opts.device == "cuda":
        growth = ours["mem_last"] / ours["mem_step5"] - 1 if ours["mem_step5"] else float("nan")
        lines.append(f"- ours' peak memory, last step vs step 5: {growth * 100:+.1f}%")
    table = "\n".join(lines)
    print(table)
    if opts.out:
        opts.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
