"""`simpersona serve-agent`: serve an agent dir over the OpenAI-compatible completions API.

vLLM when it is installed (`vllm serve AGENT_DIR`, continuous batching), otherwise the batched
transformers server of agent/serve.py. Either way `simulate --policy http://HOST:PORT` and
LLMPolicy.from_endpoint talk to it the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from agent.serve import ServeConfig, serve, vllm_available, vllm_command
from harness.cli.app import app
from harness.cli.defaults import default_of

BACKENDS = ("auto", "vllm", "transformers")


def _default(name: str):
    return default_of(ServeConfig, name)


@app.command("serve-agent")
def serve_agent_command(
    agent_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="agent dir written by `simpersona train-agent`"),
    host: str = typer.Option(_default("host"), help="interface to bind; keep 127.0.0.1 unless you mean it"),
    port: int = typer.Option(_default("port")),
    max_batch: int = typer.Option(_default("max_batch"), help="most prompts in one generate call (vLLM: --max-num-seqs)"),
    batch_wait_ms: float = typer.Option(_default("batch_wait_ms"),
                                        help="transformers server: how long a prompt waits for others to share its batch"),
    device: str = typer.Option(_default("device"), help="transformers server: auto, cpu, cuda or cuda:N"),
    backend: str = typer.Option(_default("backend"), help="auto (vLLM when installed), vllm or transformers"),
    served_model_name: str = typer.Option(_default("served_model_name"),
                                          help="the model name clients send [default: AGENT_DIR as given]"),
) -> None:
    """Serve the agent until Ctrl-C: POST /v1/completions, GET /v1/models, /health (and /stats)."""
    if backend not in BACKENDS:
        raise typer.BadParameter(f"--backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if not (agent_dir / "persona.json").is_file():
        raise typer.BadParameter(f"{agent_dir} has no persona.json: not an agent dir written by train-agent")
    config = ServeConfig(host=host, port=port, max_batch=max_batch, batch_wait_ms=batch_wait_ms, device=device,
                         backend=backend, served_model_name=served_model_name)
    console = Console()
    use_vllm = backend == "vllm" or (backend == "auto" and vllm_available())
    if backend == "vllm" and not vllm_available():
        raise typer.BadParameter("--backend vllm, but vLLM is not installed here (pip install vllm)")
    if use_vllm:
        command = vllm_command(agent_dir, config)
        console.print("exec: " + " ".join(command))
        os.execvp(command[0], command)
    console.print(f"serving {agent_dir} with transformers at http://{host}:{port}/v1 "
                  f"(batches of up to {max_batch}, waiting {batch_wait_ms:g} ms); Ctrl-C stops")
    serve(agent_dir, config)
