"""Learn discrete buyer types from clickstreams: ingest, features, the behaviour-aware VQ-VAE,
per-shop type mixes. Imports nothing from storefronts, agent or harness."""
