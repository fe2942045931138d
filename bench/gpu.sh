#!/usr/bin/env bash
# The GPU figures in one call (a GPU machine with no network): the GPT-2-size benchmark of the four loops, one
# whole run of configs/gpt2_imdb.yaml on GPT-2-size models built locally, and `accelerate launch` with the
# single-GPU config on tiny models. Pinned packages the machine lacks come as wheels in .whl/ (see BENCHMARKS.md).
#   OUT=runs/gpu bash bench/gpu.sh
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch, transformers, trl, accelerate, peft, datasets, pyarrow
print('python', sys.version.split()[0], '| torch', torch.__version__, '| transformers', transformers.__version__,
      '| trl', trl.__version__, '| accelerate', accelerate.__version__, '| peft', peft.__version__,
      '| datasets', datasets.__version__, '| pyarrow', pyarrow.__version__)"; } 2>&1 | tee "$OUT/env.txt"

timeout "${BENCH_S:-260}" python3 bench/bench_ppo.py --size gpt2 --device cuda --steps "${STEPS:-4}" \
    --notebook_steps 1 --out "$OUT/bench_gpt2.md" > "$OUT/bench.log" 2>&1
echo "bench exit code $?"
python3 bench/bench_ppo.py --size gpt2 --device cuda --epoch --epoch_limit_s "${EPOCH_S:-220}" \
    --out "$OUT/epoch_gpt2.md" > "$OUT/epoch.log" 2>&1
echo "epoch exit code $?"
timeout 120 python3 - > "$OUT/launch.log" 2>&1 <<'PY'
import subprocess, sys, tempfile, yaml
from pathlib import Path
sys.path.insert(0, ".")
from ppo_lm.tiny_models import build_classifier, build_policy, write_dataset
work = Path(tempfile.mkdtemp())
config = {"model_name_or_path": str(build_policy(work / "policy")), "dataset_name": str(write_dataset(work / "d.jsonl")),
          "min_text_length": 20, "reward_kwargs": {"model": str(build_classifier(work / "classifier"))},
          "batch_size": 16, "mini_batch_size": 8, "steps": 3, "output_dir": str(work / "run")}
(work / "c.yaml").write_text(yaml.safe_dump(config))
command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/single_gpu.yaml",
           "train_ppo.py", "--config", str(work / "c.yaml")]
print("$", " ".join(command), flush=True)
code = subprocess.call(command)
print("accelerate launch (single_gpu.yaml) exit code", code, "| files:", sorted(p.name for p in (work / "run").iterdir()))
PY
echo "launch exit code $?"
tail -3 "$OUT/launch.log"
cat "$OUT"/*.md
