"""Plain conversion: nothing to calibrate, latency = T."""

from snnconv.methods.base import Method


class Baseline(Method):
    name = "baseline"
