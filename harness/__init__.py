"""Browser orchestration, observations, simulation, reports and the `simpersona` command line."""
