"""A reward file whose import fails (tests/test_reward.py: the error names the file and the cause)."""

import not_a_module  # noqa: F401
