"""The quickstart's main job runs end to end (at toy size) and its loss is finite."""

import math

from salt_fast import demo


def test_demo_runs_every_truncation_policy():
    for truncation in ("min", "random", "pad"):
        loss = demo.main(["--steps", "2", "--frames", "4", "--resolution", "64", "--depth", "1", "--truncation", truncation])
        assert math.isfinite(loss)
