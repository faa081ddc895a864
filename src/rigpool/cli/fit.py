"""`rigpool fit MODEL`: which GPUs can serve a model, how fast, and at what price per token.

A thin renderer over `rigpool.hardware.plan`; register it with `app.command("fit")(fit_command)`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from rigpool.core.errors import RigpoolError
from rigpool.hardware.memory import quant_format
from rigpool.hardware.models import ModelArch, load_model_arch
from rigpool.hardware.plan import (
    HOP_RTT_S,
    SERVING_BATCH,
    TTFT_PROMPT_TOKENS,
    Option,
    multi_gpu_options,
    single_gpu_options,
    why_no_single_gpu,
)


def _money(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"${x:.{digits}f}"


def _option_json(o: Option) -> dict[str, Any]:
    return dataclasses.asdict(o)


def _render_table(title: str, options: list[Option], console: Console) -> None:
    table = Table(title=title)
    for col, justify in (
        ("GPU", "left"),
        ("quant", "left"),
        ("mem/GPU GB", "right"),
        ("decode tok/s", "right"),
        (f"TTFT {TTFT_PROMPT_TOKENS} tok", "right"),
        ("$/GPU-h", "right"),
        ("$/M out tok", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for o in options:
        label = o.gpu if o.n_gpus == 1 else f"{o.n_gpus}x {o.gpu} ({o.kind})"
        per_gpu = None if o.usd_per_hour is None else o.usd_per_hour / o.n_gpus
        table.add_row(
            label,
            o.quant,
            f"{o.memory_gb_per_gpu:.1f}",
            f"{o.decode_tps:.1f}",
            f"{o.ttft_s * 1000:.0f} ms",
            _money(per_gpu),
            _money(o.usd_per_m_tokens, 2),
        )
    console.print(table)


def fit_command(
    model: str = typer.Argument(..., help="Catalog model id, or a folder holding config.json."),
    context: int = typer.Option(4096, "--context", "-c", min=1, help="Tokens per sequence."),
    quant: str | None = typer.Option(
        None, "--quant", "-q", help="Weight format (fp16, q8_0, q4_k_m, int4...); default: best."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Show which GPUs can serve MODEL, at what quantization, speed and price per token."""
    console = Console()
    try:
        arch: ModelArch = load_model_arch(model)
        if quant is not None:
            quant_format(quant)
        singles = single_gpu_options(arch, context, quant)
        multi = [] if singles else multi_gpu_options(arch, context, quant)
        reason = None if singles else why_no_single_gpu(arch, context, quant)
    except RigpoolError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc

    plan = multi[0] if multi else None
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "model": arch.name,
                    "context": context,
                    "quant": quant,
                    "assumptions": {
                        "serving_batch": SERVING_BATCH,
                        "ttft_prompt_tokens": TTFT_PROMPT_TOKENS,
                        "pipeline_hop_rtt_s": HOP_RTT_S,
                    },
                    "single_gpu": [_option_json(o) for o in singles],
                    "no_single_gpu_reason": reason,
                    "multi_gpu_plan": _option_json(plan) if plan else None,
                    "multi_gpu_alternatives": [_option_json(o) for o in multi[1:6]],
                },
                indent=2,
            )
        )
        return

    params = f"{arch.n_params / 1e9:.1f}B params"
    if arch.is_moe:
        params += f", {arch.n_active_params / 1e9:.1f}B active"
    console.print(f"[bold]{arch.name}[/] ({params}), context {context}")
    if singles:
        _render_table("Single-GPU options (cheapest per token first)", singles, console)
        console.print(
            f"Prices: marketplace median, else cloud on-demand, per GPU-hour, divided by tokens "
            f"at up to {SERVING_BATCH} concurrent streams."
        )
        return
    console.print(f"[yellow]No single card can serve it:[/] {reason}")
    if plan is None:
        console.print("[red]No priced multi-card plan fits either.[/]")
        return
    hop = (
        f", + {HOP_RTT_S * 1000:.0f} ms per hop per token over the network"
        if plan.kind == "pipeline"
        else ""
    )
    how = (
        "tensor parallel on one host"
        if plan.kind == "tensor"
        else "a pipeline of layer spans across providers"
    )
    console.print(f"Cheapest plan: {plan.n_gpus}x {plan.gpu} at {plan.quant} via {how}{hop}.")
    _render_table("Multi-GPU plans (cheapest per token first)", multi[:6], console)
