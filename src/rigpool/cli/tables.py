"""Rich tables the CLI prints."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def providers_table(providers: list[dict[str, Any]]) -> Table:
    table = Table(title=f"rigpool fleet: {len(providers)} provider(s)")
    columns = ("id", "state", "attested", "backend", "GPUs", "models", "region", "load", "served")
    for column in columns:
        table.add_column(column)
    for p in providers:
        gpus = (
            ", ".join(
                f"{g['name']} {g['vram_mb'] / 1024:.0f} GB"
                + (" (emulated)" if g.get("emulated") else "")
                for g in p["gpus"]
            )
            or "none (CPU)"
        )
        load = p["load"]
        colour = {"online": "[green]", "attesting": "[yellow]"}.get(p["state"], "[red]")
        table.add_row(
            p["id"][:10] + "…",
            colour + p["state"],
            (p.get("attestation") or {}).get("status", "-"),
            p["backend"],
            gpus,
            ", ".join(p["models"]),
            p["region"],
            f"{load['active']}/{load['max_concurrency']}",
            str(p.get("served", 0)),
        )
    return table
