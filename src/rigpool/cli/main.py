"""The one `rigpool` command: thin wrappers over the packages, with readable errors."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import signal
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from rigpool.cli.common import DEFAULT_DB, DbOption, fail
from rigpool.cli.evidence import evidence_app
from rigpool.cli.fit import fit_command
from rigpool.cli.ledger import ledger_app, receipt_app
from rigpool.cli.simulate import simulate_command
from rigpool.cli.validator import validator_app
from rigpool.core.errors import RigpoolError

app = typer.Typer(
    help="rigpool: pool idle GPUs into one OpenAI-compatible LLM inference network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(
    help="Manage API keys (operator command; writes the coordinator's database)."
)
app.add_typer(keys_app, name="keys")
console = Console()


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def coordinator(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    db: DbOption = DEFAULT_DB,
    model_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--model-dir", help="Model folder (config.json + tokenizer.json); repeatable."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    billing: Annotated[
        bool,
        typer.Option(
            "--billing/--no-billing",
            envvar="RIGPOOL_BILLING",
            help="Escrow every request in the ledger (keys need a funded consumer account).",
        ),
    ] = True,
) -> None:
    """Run the coordinator: gateway, registry and the agents' WebSocket endpoint."""
    import uvicorn

    from rigpool.coordinator.access_log import install_redaction
    from rigpool.coordinator.app import create_app
    from rigpool.coordinator.http_protocol import http_protocol
    from rigpool.coordinator.settings import Settings
    from rigpool.protocol.messages import MAX_FRAME_BYTES

    _logging(log_level)
    install_redaction()  # query-string values (keys sent as ?api_key=...) stay out of the logs
    try:
        settings = Settings(
            database_url=db, host=host, port=port, model_dirs=model_dir or [], billing=billing
        )
        application = create_app(settings)
    except (RigpoolError, ValueError) as exc:
        raise fail(str(exc)) from None
    console.print(
        f"coordinator listening on http://{host}:{port} (gateway: http://{host}:{port}/v1)"
    )
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level=log_level,
        ws_max_size=MAX_FRAME_BYTES,
        timeout_graceful_shutdown=5,
        http=http_protocol(settings.header_read_timeout_s),
    )


@app.command()
def provide(
    coordinator: Annotated[str, typer.Option(help="Coordinator URL, e.g. http://host:8000.")],
    model: Annotated[
        str | None, typer.Option(help="Model folder or hub id (transformers), or proxied model.")
    ] = None,
    backend: Annotated[
        str, typer.Option(help="auto, transformers, openai-proxy or emulated.")
    ] = "auto",
    served_name: Annotated[
        str | None, typer.Option(help="Name the network knows the model by.")
    ] = None,
    proxy_url: Annotated[
        str | None, typer.Option(help="Local OpenAI-compatible server (vLLM, llama.cpp, Ollama).")
    ] = None,
    emulate: Annotated[
        str | None, typer.Option(help="Emulate this catalog GPU (e.g. 'RTX 4090'); no GPU work.")
    ] = None,
    timing_model: Annotated[
        str, typer.Option(help="Architecture whose speed an emulated GPU reproduces.")
    ] = "llama-3.1-8b",
    identity: Annotated[
        Path | None, typer.Option(help="Solana keypair file (created when missing).")
    ] = None,
    receipts: Annotated[
        Path | None,
        typer.Option(
            help="Journal of countersigned receipts not yet acknowledged (default: beside "
            "the keypair, <keypair>-receipts.jsonl)."
        ),
    ] = None,
    region: Annotated[str, typer.Option(help="Region label, e.g. eu-west, us-east.")] = "local",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (transformers).")] = "auto",
    context_length: Annotated[int, typer.Option(help="Context of proxied/emulated models.")] = 2048,
    price_in: Annotated[float, typer.Option(help="USD per million input tokens.")] = 0.05,
    price_out: Annotated[float, typer.Option(help="USD per million output tokens.")] = 0.10,
    max_concurrency: Annotated[int, typer.Option(help="Generations run at once.")] = 4,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Join a rigpool network as a provider (dials out; no inbound port needed)."""
    from rigpool.agent.daemon import Agent, AgentRefused
    from rigpool.agent.receipt_journal import default_journal_path
    from rigpool.agent.setup import (
        ProvideOptions,
        build_backend,
        capabilities_for,
        default_identity_path,
    )
    from rigpool.protocol.signing import load_or_create_identity

    _logging(log_level)
    opts = ProvideOptions(
        backend=backend,
        model=model,
        served_name=served_name,
        proxy_url=proxy_url,
        emulate=emulate,
        timing_model=timing_model,
        context_length=context_length,
        device=device,
        region=region,
        price_in=price_in,
        price_out=price_out,
        max_concurrency=max_concurrency,
    )
    key_path = identity or default_identity_path()
    try:
        ident, created = load_or_create_identity(key_path)
        console.print(f"{'created' if created else 'using'} identity {ident.agent_id} ({key_path})")
        agent_backend = build_backend(opts)
        caps, note = capabilities_for(agent_backend, opts)
    except (RigpoolError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    console.print(note)
    agent = Agent(
        coordinator,
        ident,
        agent_backend,
        caps,
        on_status=console.print,
        receipts_path=receipts or default_journal_path(key_path),
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        await agent.run_forever()

    try:
        asyncio.run(main())
    except AgentRefused as exc:
        raise fail(str(exc), code=2) from None
    console.print("agent stopped")


@app.command()
def swarm(
    coordinator: Annotated[str, typer.Option(help="Coordinator URL.")],
    agents: Annotated[int, typer.Option(help="Number of emulated agents.")] = 20,
    model: Annotated[
        Path | None, typer.Option(help="Model folder (for its name and tokenizer).")
    ] = None,
    gpus: Annotated[str, typer.Option(help="Comma-separated catalog GPUs to cycle.")] = ",".join(
        ("RTX 3060 8GB", "RTX 3090", "RTX 4090", "L4", "A100 80GB", "H100 SXM")
    ),
    region: Annotated[str, typer.Option(help="Region of every agent.")] = "local",
    time_scale: Annotated[float, typer.Option(help="Multiply emulated timing by this.")] = 1.0,
    straggler_share: Annotated[float, typer.Option(help="Share of agents that straggle.")] = 0.0,
    straggle_prob: Annotated[float, typer.Option(help="Per-request straggle chance.")] = 0.05,
    straggle_factor: Annotated[float, typer.Option(help="Slowdown of a straggle.")] = 10.0,
    max_concurrency: Annotated[int, typer.Option(help="Requests per agent at once.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed for stragglers.")] = 0,
    price_in: Annotated[
        float, typer.Option(help="Every agent's input price, USD per million tokens.")
    ] = 0.0,
    price_out: Annotated[
        float, typer.Option(help="Every agent's output price, USD per million tokens.")
    ] = 0.0,
    flush_window_ms: Annotated[
        float,
        typer.Option(help="Token batching window; 0 sends each token alone (as protocol 1.4)."),
    ] = 2.0,
) -> None:
    """Run many emulated-GPU agents in one process (load, tail and chaos tests)."""
    from rigpool.devnet.swarm import SwarmSpec, run_swarm
    from rigpool.devnet.toymodel import ensure_toy_model

    folder = model or ensure_toy_model()
    spec = SwarmSpec(
        agents=agents,
        model_dir=folder,
        served_name=folder.name,
        gpus=tuple(g.strip() for g in gpus.split(",") if g.strip()),
        region=region,
        time_scale=time_scale,
        straggler_share=straggler_share,
        straggle_prob=straggle_prob,
        straggle_factor=straggle_factor,
        max_concurrency=max_concurrency,
        seed=seed,
        price_in_per_mtok=price_in,
        price_out_per_mtok=price_out,
        flush_window_s=flush_window_ms / 1000,
    )
    console.print(f"swarm of {agents} emulated agents -> {coordinator}")
    try:
        asyncio.run(run_swarm(coordinator, spec))
    except (RigpoolError, ValueError) as exc:
        raise fail(str(exc)) from None


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    consumer: Annotated[
        str | None,
        typer.Option(help="Ledger account the key spends from (the consumer's wallet)."),
    ] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Create an API key and print it (it is stored hashed and shown only this once)."""
    from rigpool.coordinator.db import open_database
    from rigpool.coordinator.keys import create_key

    key = create_key(open_database(db), name=name, consumer=consumer)
    typer.echo(key)


@app.command()
def providers(
    coordinator: Annotated[str, typer.Option(help="Coordinator URL.")] = "http://127.0.0.1:8000",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the fleet: every agent, its GPUs, models, state and load."""
    import httpx

    from rigpool.cli.tables import providers_table

    try:
        response = httpx.get(coordinator.rstrip("/") + "/v1/providers", timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise fail(f"cannot read the fleet from {coordinator}: {exc}") from None
    data = response.json()["data"]
    if json_out:
        typer.echo(json.dumps(data, indent=2))
    else:
        console.print(providers_table(data))


@app.command("toy-model")
def toy_model(
    path: Annotated[Path | None, typer.Argument(help="Where to build it (default: cache).")] = None,
) -> None:
    """Build (or find) the small untrained test model and print its folder."""
    from rigpool.devnet.toymodel import build_toy_model, ensure_toy_model

    folder = build_toy_model(path) if path else ensure_toy_model()
    typer.echo(str(folder))


@app.command()
def up(
    port: Annotated[int, typer.Option(help="Gateway port (0: any free port).")] = 8000,
    providers_count: Annotated[
        int, typer.Option("--providers", help="Number of agents (mix of CPU and emulated GPUs).")
    ] = 4,
    api_key: Annotated[
        str | None, typer.Option(help="API key to accept (default: random).")
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="State folder (default: a temp dir).")
    ] = None,
) -> None:
    """Start a local network (coordinator + agents on loopback) until Ctrl-C."""
    from rigpool.cli.tables import providers_table
    from rigpool.devnet.localnet import LocalNetwork, NetworkError, provider_mix
    from rigpool.devnet.toymodel import ensure_toy_model

    if providers_count < 1:
        raise fail("--providers must be at least 1")
    key = api_key or "rp-local-" + secrets.token_urlsafe(16)
    folder = workdir or Path(tempfile.mkdtemp(prefix="rigpool-up-"))
    console.print("preparing the test model ...")
    model_dir = ensure_toy_model()
    net = LocalNetwork(folder, model_dir, provider_mix(providers_count), key, port=port)
    stop = False

    def _stop(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        with console.status(f"starting coordinator and {providers_count} agents ..."):
            net.start()
        console.print(providers_table(net.providers_view()))
        console.print(
            f"\n[bold]gateway[/bold]  {net.gateway_url}\n[bold]api key[/bold]  {key}\n"
            f"[bold]model[/bold]    {net.model_name}\n[bold]state[/bold]    {folder}\n\n"
            "Try it:\n"
            f"  curl {net.gateway_url}/chat/completions -H 'Authorization: Bearer {key}' "
            "-H 'Content-Type: application/json' \\\n"
            f'    -d \'{{"model": "{net.model_name}", "messages": '
            '[{"role": "user", "content": "hello"}], "max_tokens": 16}\'\n'
            f"  rigpool providers --coordinator {net.base_url}\n\nCtrl-C stops everything."
        )
        import time

        while not stop:
            time.sleep(0.5)
    except NetworkError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        pass
    finally:
        with console.status("stopping ..."):
            net.stop()
    console.print("stopped")


@app.command()
def demo(
    providers_count: Annotated[int, typer.Option("--providers", help="Number of agents.")] = 4,
    requests: Annotated[int, typer.Option(help="Requests to send.")] = 48,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 8,
    max_tokens: Annotated[int, typer.Option(help="Tokens per completion.")] = 24,
    report: Annotated[Path | None, typer.Option(help="Also write the report as JSON here.")] = None,
) -> None:
    """Start a local network, send a workload through the official openai client, report."""
    from rigpool.devnet.demo import run_demo

    try:
        ok = run_demo(
            console,
            providers=providers_count,
            requests=requests,
            concurrency=concurrency,
            max_tokens=max_tokens,
            report_path=report,
        )
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    if not ok:
        raise typer.Exit(1)


app.command("fit")(fit_command)
app.command("simulate")(simulate_command)
app.add_typer(ledger_app, name="ledger")
app.add_typer(receipt_app, name="receipt")
app.add_typer(validator_app, name="validator")
app.add_typer(evidence_app, name="evidence")

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
