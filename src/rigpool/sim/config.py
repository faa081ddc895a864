"""Every parameter of a simulation run, in one frozen dataclass that the report copies whole.

Nothing the results depend on is hidden in code: churn, stragglers, network, prices, SLOs and the
policies compared are fields here, with the reason for each default next to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rigpool.core.errors import BadRequest

TRACES = ("azure-conv", "azure-code", "mooncake-conv")
POLICIES = ("random", "round-robin", "least-loaded", "rigpool", "centralized")
SCALINGS = ("superpose", "compress")


@dataclass(frozen=True)
class SimConfig:
    """One simulation run (see docs/simulator.md for the model behind each field).

    Fleet and load:
        gpus: GPUs in the decentralized fleet (hosts are sampled until this many cards).
        consumer_share: Share of GPUs on single-card home PCs (Steam survey mix); the rest are
            marketplace hosts drawn from vast.ai offers (multi-GPU rigs, data-center cards).
        model: Catalog model every request asks for.
        load: Offered load as a share of the fleet's serving capacity (placement's
            capacity of every host that can hold the model, at 100 % utilization).
        placement_utilization: The `utilization` placement provisions replicas at.
        context: KV-cache tokens reserved per sequence (memory provisioning).

    Workload:
        trace: "azure-conv", "azure-code" or "mooncake-conv" (package copies of the real traces).
        duration_s: Simulated seconds of arrivals (then in-flight requests drain).
        trace_offset_s: Where in the (looped) trace the window starts.
        scaling: How the trace reaches the target rate: "superpose" = copies of the trace, each
            shifted by a random offset (the hour's shape is kept, as when more users arrive);
            "compress" = timestamps divided by the rate factor (the trace replayed faster,
            looped when the window is longer than the compressed trace).

    Churn, failures, stragglers (consumer = home PC; datacenter = marketplace host):
        session_median_h, offline_median_h, session_shape: Weibull on/off periods (heavy
            tailed for shape < 1); marketplace hosts use `dc_session_median_h`.
        graceful_share: Share of departures that drain in-flight requests; the rest vanish.
        rejoin_load_s: Seconds to reload the model after coming back.
        crash_mtbf_h, dc_crash_mtbf_h: Mean time between crashes (driver reset, OOM, reboot).
        restart_s: Seconds from a crash's detection to the agent serving again.
        detect_s: Seconds before the gateway notices a vanished agent (heartbeat timeout).
        straggle_p, dc_straggle_p: Share of requests (per attempt) that straggle.
        straggle_alpha, straggle_min, straggle_cap: Pareto slowdown factor of a straggler.
        slow_host_share, slow_host_range: Home hosts persistently slower than the model
            predicts (shared with a game, power-limited), by a uniform factor.

    Network (round trips, milliseconds):
        same_region_ms: Base RTT inside one region between a gateway and a home host.
        last_mile_median_ms, last_mile_sigma: Per home host extra RTT (lognormal).
        access_median_ms, access_sigma: Per request user access RTT (lognormal), the same
            for every policy.
        jitter_sigma: Per request multiplicative lognormal jitter on the WAN part.
        datacenter_rtt_ms: Gateway to GPU inside one data center.

    Centralized baseline and money:
        central_gpu, central_region: The homogeneous cluster.
        central_price: "cloud" (on-demand, catalog `cloud_usd_per_hour`) or "market".
        central_batch_sensitivity: Batch size used for the "what if the cluster batched
            harder" cost figure (placement caps replicas at 16 sequences).
        consumer_usd_per_gbps_h: Price of a home card without a vast.ai median price, per
            GB/s of memory bandwidth per hour (the median ratio of priced consumer cards).

    Policies and objectives:
        policies: Which of random, round-robin, least-loaded, rigpool, centralized to run.
        hedge_share, min_reputation, price_weight: rigpool's knobs (HedgePolicy / Router).
        slo_ttft_s, slo_tpot_s: The latency objective for goodput.
        drain_limit_s: After the window, how long in-flight requests may still finish.
        samples: Utilization samples over the run.
    """

    gpus: int = 2_000
    consumer_share: float = 0.8
    model: str = "llama-3.1-8b"
    load: float = 0.5
    placement_utilization: float = 0.8
    context: int = 4096
    trace: str = "azure-conv"
    duration_s: float = 600.0
    trace_offset_s: float = 0.0
    scaling: str = "superpose"
    seed: int = 7
    # churn and failures
    session_median_h: float = 3.0
    dc_session_median_h: float = 48.0
    offline_median_h: float = 1.0
    session_shape: float = 0.6
    graceful_share: float = 0.7
    rejoin_load_s: float = 60.0
    crash_mtbf_h: float = 24.0
    dc_crash_mtbf_h: float = 720.0
    restart_s: float = 120.0
    detect_s: float = 5.0
    # stragglers
    straggle_p: float = 0.05
    dc_straggle_p: float = 0.01
    straggle_alpha: float = 1.5
    straggle_min: float = 1.5
    straggle_cap: float = 50.0
    slow_host_share: float = 0.05
    slow_host_range: tuple[float, float] = (1.5, 4.0)
    # network
    same_region_ms: float = 10.0
    last_mile_median_ms: float = 15.0
    last_mile_sigma: float = 0.5
    access_median_ms: float = 15.0
    access_sigma: float = 0.5
    jitter_sigma: float = 0.1
    datacenter_rtt_ms: float = 0.5
    # centralized baseline and prices
    central_gpu: str = "H100 SXM"
    central_region: str = "us-east"
    central_price: str = "cloud"
    central_batch_sensitivity: int = 64
    consumer_usd_per_gbps_h: float = 0.0002
    # policies and objectives
    policies: tuple[str, ...] = POLICIES
    hedge_share: float = 0.05
    min_reputation: float = 0.5
    price_weight: float = 0.5
    slo_ttft_s: float = 2.0
    slo_tpot_s: float = 0.1
    drain_limit_s: float = 900.0
    samples: int = 120
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.trace not in TRACES:
            raise BadRequest(
                f"unknown trace {self.trace!r}; choose one of {', '.join(TRACES)}", param="trace"
            )
        bad = [p for p in self.policies if p not in POLICIES]
        if bad or not self.policies:
            raise BadRequest(
                f"unknown policy {', '.join(bad) or '(none given)'}; choose from "
                f"{', '.join(POLICIES)}",
                param="policy",
            )
        if self.scaling not in SCALINGS:
            raise BadRequest(f"scaling must be one of {', '.join(SCALINGS)}", param="scaling")
        if self.gpus < 1:
            raise BadRequest("gpus must be at least 1", param="gpus")
        if not 0.0 < self.load <= 1.0:
            raise BadRequest("load must lie in (0, 1]", param="load")
        if self.duration_s <= 0:
            raise BadRequest("duration must be positive", param="duration")
        if not 0.0 <= self.consumer_share <= 1.0:
            raise BadRequest("consumer_share must lie in [0, 1]", param="consumer_share")
        if self.central_price not in ("cloud", "market"):
            raise BadRequest("central_price must be 'cloud' or 'market'", param="central_price")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
