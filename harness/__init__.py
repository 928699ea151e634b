"""The harness, in four layers (each imports only the ones before it):
drivers (browser/http, observation, safety) ← sim (population, simulate, ab, scale, policies)
← eval (split, replay, evaluate, report, demo) ← cli (the `simpersona` commands)."""
