"""Adaptive KL control: beta goes up while the KL is above the target and down while it is below (never under
min_kl_coef), at the rate the default config sets, and that rate can move beta a lot within one default run."""

from pathlib import Path

import pytest
import yaml
from trl.trainer.utils import AdaptiveKLController

from conftest import ROOT, run_script
from ppo_lm.metrics import read_metrics
from ppo_lm.kl_control import FlooredKLController

DEFAULT = yaml.safe_load((ROOT / "configs/smollm2_sentiment.yaml").read_text())
MAX_STEP = 0.2 * DEFAULT["batch_size"] / DEFAULT["horizon"]  # TRL clips the relative error at +-0.2


def test_default_config_can_move_beta_several_fold_within_one_run():
    # the most beta can change over one default run, each way: well beyond the 1.3 %/step of horizon 500
    assert (1 + MAX_STEP) ** DEFAULT["steps"] >= 4
    assert (1 - MAX_STEP) ** DEFAULT["steps"] <= 1 / 4


def test_floored_controller_is_trls_above_the_floor_and_stops_at_it():
    ours, trl = FlooredKLController(0.2, 6, 64, floor=0.1), AdaptiveKLController(0.2, 6, 64)
    for kl in [12, 7, 6.5, 6, 3, 0]:  # above, near, at and below the target
        before = ours.value
        ours.update(kl, 32)
        trl.update(kl, 32)
        assert ours.value == pytest.approx(trl.value)
        assert (ours.value > before) == (kl > 6) and (ours.value < before) == (kl < 6)
    for _ in range(40):  # far below the target for long: TRL's beta keeps shrinking, ours stops at the floor
        ours.update(0.0, 32)
        trl.update(0.0, 32)
    assert ours.value == 0.1 and trl.value < 0.01


@pytest.mark.parametrize("side", ["above", "below"])
def test_beta_follows_the_kl_on_a_tiny_run(tiny_config, tmp_path, side):
    """A real run on the tiny models, with the default config's controller scaled to batch 8 (horizon / batch
    and min_kl_coef / init_kl_coef kept). With the target far below the measured KL beta must rise by the full
    step every step; far above, it must fall by the full step until it reaches the floor (default: init_kl_coef)."""
    batch = 8
    floor = DEFAULT.get("min_kl_coef", 0) / DEFAULT["init_kl_coef"] * 0.2
    init = 0.2 if side == "above" else 0.4  # below: start above the floor, to see beta come down to it
    config = tiny_config(batch_size=batch, mini_batch_size=4, steps=10, learning_rate=1e-3, save_steps=100,
                         init_kl_coef=init, horizon=DEFAULT["horizon"] * batch / DEFAULT["batch_size"],
                         target=1e-3 if side == "above" else 1e3,
                         **({"min_kl_coef": floor} if "min_kl_coef" in DEFAULT else {}))
    result = run_script("--config", config)
    assert result.returncode == 0, result.stderr
    rows = read_metrics(Path(tmp_path, "run", "metrics.jsonl"))
    betas = [r["objective/kl_coef"] for r in rows]
    assert betas[0] == pytest.approx(init)
    for row, beta, following in zip(rows, betas, betas[1:]):
        if side == "above" and row["objective/kl"] > 1.2e-3:  # clipped error +0.2: the full step up
            assert following == pytest.approx(beta * (1 + MAX_STEP))
        if side == "below":  # clipped error -0.2: the full step down, not below the floor
            assert following == pytest.approx(max(beta * (1 - MAX_STEP), floor))
    if side == "above":
        assert sum(r["objective/kl"] > 1.2e-3 for r in rows[:-1]) >= 5  # the policy moved: the rule was exercised
        assert betas[-1] > init * (1 + MAX_STEP) ** 2  # net: clearly up
    else:
        assert betas[4] == pytest.approx(init * (1 - MAX_STEP) ** 4) and betas[-1] == pytest.approx(max(
            floor, init * (1 - MAX_STEP) ** 9))
