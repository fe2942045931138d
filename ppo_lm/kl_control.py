"""KL control: TRL's adaptive KL controller with a floor under beta (the `min_kl_coef` setting)."""

from trl.trainer.utils import AdaptiveKLController


class FlooredKLController(AdaptiveKLController):
    """TRL's adaptive KL controller (beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * episodes / horizon), with beta
    kept at or above `floor`. While the policy first moves away from the reference its KL is below the target, so
    TRL's rule lowers beta step after step; by the time KL reaches the target beta is a fraction of its start and
    the KL overshoots while beta climbs back. The floor ends that wind-down."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float, floor: float):
        super().__init__(init_kl_coef, target, horizon)
        self.floor = floor

    def update(self, current, n_steps):
        super().update(current, n_steps)
        self.value = max(self.value, self.floor)
