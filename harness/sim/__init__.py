"""Simulation: population sampling, the simulation loop, run dirs, Ray shards, A/B runs and their
paired statistics, and the one way to build a policy. Imports harness.drivers, nothing above it."""
