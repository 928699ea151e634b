"""Evaluation: shop splits, replay of real sessions into traces, held-out evaluation, reports and
the demo pipeline. Imports harness.drivers and harness.sim, never harness.cli."""
