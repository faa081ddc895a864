"""`rigpool simulate`: replay a real trace on a simulated fleet under several routing policies.

Register with `app.command("simulate")(simulate_command)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from rigpool.core.errors import BadRequest, NotFound
from rigpool.sim.config import POLICIES, SimConfig
from rigpool.sim.inputs import Trace, read_trace_csv
from rigpool.sim.report import write_report
from rigpool.sim.runner import prepare, run_experiment
from rigpool.sim.shards import ShardOutcome, check_shards, prepare_shard, run_sharded

QUICK = {"gpus": 300, "duration_s": 60.0, "drain_limit_s": 300.0, "samples": 30}


def simulate_command(
    gpus: int = typer.Option(2_000, help="GPUs in the decentralized fleet."),
    duration: float = typer.Option(600.0, help="Simulated seconds of arrivals."),
    trace: str = typer.Option("azure-conv", help="azure-conv, azure-code or mooncake-conv."),
    trace_file: Path | None = typer.Option(
        None, help="A CSV trace (t_s,prompt_tokens,output_tokens) instead of a packaged one."
    ),
    policy: list[str] = typer.Option(
        list(POLICIES), help="Policies to compare (repeat the option); default all."
    ),
    load: float = typer.Option(0.5, help="Offered load as a share of the fleet's capacity."),
    model: str = typer.Option("llama-3.1-8b", help="Catalog model every request asks for."),
    scaling: str = typer.Option("superpose", help="superpose or compress (trace time)."),
    seed: int = typer.Option(7, help="Seed: the same seed gives the same report."),
    out: Path = typer.Option(Path("sim-report"), help="Report folder."),
    quick: bool = typer.Option(False, help="A small run (300 GPUs, 60 s) for tests."),
    shards: int = typer.Option(
        1, help="Split the fleet into K cells of the same GPU/region mix, 1/K of the load each."
    ),
    sample_shards: int = typer.Option(
        0, help="Simulate M of the K cells (random, seeded); totals scaled by K/M. 0 = all."
    ),
    workers: int = typer.Option(0, help="Processes for sharded runs (0 = one per CPU)."),
) -> None:
    """Simulate the fleet; write report.json, PNG plots and summary.md to OUT."""
    console = Console()
    kwargs: dict[str, object] = {
        "gpus": gpus,
        "duration_s": duration,
        "trace": trace,
        "policies": tuple(p.strip() for item in policy for p in item.split(",") if p.strip()),
        "load": load,
        "model": model,
        "scaling": scaling,
        "seed": seed,
    }
    if quick:
        kwargs.update(QUICK)
    try:
        custom = read_trace_csv(trace_file) if trace_file is not None else None
        if custom is not None:
            kwargs["trace"] = "azure-conv"  # validated name; the custom trace replaces it
        cfg = SimConfig(**kwargs)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        if shards > 1:
            m = sample_shards or shards
            check_shards(cfg, shards, m)
            prepare_shard(cfg, shards, 0, custom)  # bad input fails here, before any worker
        else:
            prep = prepare(cfg, custom)
    except (BadRequest, NotFound) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if shards > 1:
        _sharded(console, cfg, shards, m, workers or None, custom, out, t0)
        return
    console.print(
        f"{len(prep.workload):,} requests over {cfg.duration_s:g} s; "
        f"{prep.fleet.total_gpus:,} GPUs placed on {len(prep.fleet):,} hosts; "
        f"inputs built in {prep.prepare_s:.1f} s"
    )
    with Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:

        def start(name: str) -> Callable[[float], None]:
            task = bar.add_task(name, total=cfg.duration_s)

            def update(sim_t: float) -> None:
                bar.update(task, completed=min(sim_t, cfg.duration_s))

            return update

        report = run_experiment(cfg, prepared=prep, on_policy_start=start)
    paths = write_report(report, out)
    console.print((out / "summary.md").read_text())
    console.print(
        f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - t0:.1f} s"
    )


def _sharded(
    console: Console,
    cfg: SimConfig,
    shards: int,
    sample: int,
    workers: int | None,
    trace: Trace | None,
    out: Path,
    t0: float,
) -> None:
    """A cell-sharded run (see rigpool.sim.shards): a bar over the sampled shards."""
    console.print(
        f"{cfg.gpus:,} GPUs as {shards} shards of about {cfg.gpus / shards:,.0f} GPUs; "
        f"simulating {sample} of them ({', '.join(cfg.policies)}), totals scaled by "
        f"{shards / sample:g}"
    )
    with Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} shards"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("shards", total=sample)

        def done(o: ShardOutcome) -> None:
            bar.update(task, advance=1)

        try:
            report = run_sharded(
                cfg, shards, sample, workers=workers, trace=trace, on_shard_done=done
            )
        except (BadRequest, NotFound) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    paths = write_report(report, out)
    console.print((out / "summary.md").read_text())
    console.print(
        f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - t0:.1f} s"
    )
