"""The discrete-event engine: simulated agents serving requests on a simulated clock.

Events happen only at a request's arrival, its receipt at an agent, first token, completion,
hedge timer, and at churn, crashes and their detection — never per token. Each agent runs
continuous batching analytically:

* up to `max_batch` sequences hold a slot (prefilling or decoding); more wait in a FIFO;
* prefills run one after the other and stall decoding meanwhile (prefill-priority scheduling,
  as vLLM without chunked prefill);
* the decoding sequences advance together: a "virtual token clock" V grows at 1 / tpot(b) per
  second of decode time, where tpot(b) is the performance model's time per output token at
  batch b (so a busier card is slower for everyone on it). A sequence that needs k tokens (its
  straggle factor x its output) ends when V has grown by k; the agent keeps its sequences in a
  heap by end value and schedules one event for the earliest.

Client-visible times add the network: user <-> gateway (access RTT, plus the WAN if the gateway
sits in another region) and gateway <-> agent (WAN between regions, the region's own RTT, the
home last mile, a per-request jitter).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec

import numpy as np

from rigpool.scheduler.fleet import AgentRecord, FleetIndex
from rigpool.sim.fleet import CRASH, OFF_ABRUPT, OFF_GRACEFUL, ON, SimFleet
from rigpool.sim.inputs import Workload
from rigpool.sim.policies import Policy

# agent states
ONLINE, OFFLINE, DEAD, RESTARTING = 0, 1, 2, 3
# attempt states
WAIT, PREFILL, DECODE, DONE, GONE = 0, 1, 2, 3, 4
# event kinds
EV_RECV, EV_PREFILL, EV_NEXT, EV_HEDGE, EV_CHURN, EV_DETECT, EV_RESTART, EV_SAMPLE = range(8)
# request outcomes
OK, FAILED, OPEN = 0, 1, 2
REASONS = ("", "no_capacity", "retries_exhausted", "agent_lost_mid_stream", "unfinished_at_end")
R_NO_CAPACITY, R_RETRIES, R_MIDSTREAM, R_UNFINISHED = 1, 2, 3, 4


class Agent:
    """One simulated serving host (engine state; the scheduler sees its `AgentRecord`)."""

    __slots__ = (
        "V",
        "after",
        "aid",
        "b",
        "busy_to",
        "earned",
        "fails",
        "heap",
        "i",
        "indexed",
        "inflight",
        "max_batch",
        "oks",
        "online_s",
        "owd_base",
        "prefill",
        "record",
        "region",
        "since",
        "slots",
        "slow",
        "stall_from",
        "state",
        "tokens",
        "tpot",
        "v_t",
        "ver",
        "waiting",
    )  # fmt: skip

    def __init__(
        self,
        i: int,
        aid: str,
        region: int,
        max_batch: int,
        tpot: tuple[float, ...],
        prefill: Callable[[int], float],
        slow: float,
        owd_base: float,
    ) -> None:
        self.i, self.aid, self.region = i, aid, region
        self.max_batch = max_batch
        self.tpot = [t * slow for t in tpot]
        self.prefill = prefill
        self.slow = slow
        self.owd_base = owd_base  # one-way delay added inside the region (last mile included)
        self.state = OFFLINE
        self.after = OFFLINE
        self.V = 0.0
        self.v_t = 0.0
        self.b = 0
        self.stall_from = 0.0
        self.busy_to = 0.0
        self.slots = 0
        self.heap: list[tuple[float, int, Attempt]] = []
        self.waiting: deque[Attempt] = deque()
        self.inflight: set[Attempt] = set()
        self.ver = 0
        self.oks = self.fails = self.tokens = 0
        self.earned = 0.0
        self.online_s = 0.0
        self.since = 0.0
        self.record: AgentRecord | None = None
        self.indexed = False


class Request:
    __slots__ = ("first", "i", "live", "n_att", "tokens", "tried", "winner")

    def __init__(self, i: int) -> None:
        self.i = i
        self.live: list[Attempt] = []
        self.tried: list[int] = []
        self.n_att = 0
        self.first = -1.0  # client-side first-token time
        self.tokens = 0  # tokens already delivered before the current attempt
        self.winner: Attempt | None = None


class Attempt:
    __slots__ = (
        "agent",
        "base",
        "cancel",
        "k",
        "out",
        "owd",
        "prompt",
        "req",
        "state",
        "t0",
        "v0",
        "x",
    )  # fmt: skip

    def __init__(self, req: Request, agent: Agent, k: int, prompt: int, out: int, base: int,
                 owd: float, x: float, t0: float) -> None:  # fmt: skip
        self.req, self.agent, self.k = req, agent, k
        self.prompt, self.out, self.base = prompt, out, base
        self.owd, self.x, self.t0 = owd, x, t0
        self.state = WAIT
        self.v0 = 0.0
        self.cancel = False


@dataclass
class RunResult:
    """Per-request outcomes and per-agent accounting of one policy's run."""

    policy: str
    ttft: np.ndarray
    e2e: np.ndarray
    tpot: np.ndarray
    status: np.ndarray
    reason: np.ndarray
    attempts: np.ndarray
    tokens: np.ndarray
    agent_tokens: np.ndarray
    agent_earned: np.ndarray
    agent_online_s: np.ndarray
    util_t: list[float] = field(default_factory=list)
    util_slots: list[float] = field(default_factory=list)
    util_busy: list[float] = field(default_factory=list)
    util_online: list[int] = field(default_factory=list)
    events: int = 0
    wall_s: float = 0.0
    hedges: int = 0
    retries: int = 0
    failovers: int = 0
    fallbacks: int = 0
    sim_end_s: float = 0.0


_P = ParamSpec("_P")


def _without_cyclic_gc(fn: Callable[_P, RunResult]) -> Callable[_P, RunResult]:
    """Pause the cyclic garbage collector for the duration of a run.

    The run allocates millions of short-lived objects whose references are broken by hand
    (see finish_request); the cyclic collector would rescan the whole fleet each time.
    """
    import functools
    import gc

    @functools.wraps(fn)
    def wrapped(*args: _P.args, **kwargs: _P.kwargs) -> RunResult:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapped


@_without_cyclic_gc
def run_policy(
    policy_name: str,
    make: Callable[[FleetIndex, list[str]], Policy],
    fleet: SimFleet,
    wl: Workload,
    *,
    model: str,
    region_names: tuple[str, ...],
    duration_s: float,
    drain_limit_s: float,
    wan_s: np.ndarray,
    gateway_region: int | None,
    same_region_s: float,
    straggle_p: np.ndarray,
    detect_s: float,
    restart_s: float,
    samples: int,
    progress: Callable[[float], None] | None = None,
) -> RunResult:
    """Run one policy over `wl` on `fleet`; every request ends completed or failed with a reason.

    `gateway_region` None = a gateway in each user's region (decentralized); an index = one
    gateway in that region (the centralized cluster). `straggle_p[a]` is agent a's straggle
    probability (per attempt, applied to the workload's shared uniform draws).
    """
    import time as _time

    wall0 = _time.perf_counter()

    n_ag = len(fleet)
    index = FleetIndex()
    policy = make(index, fleet.agent_ids)
    agents: list[Agent] = []
    for a in range(n_ag):
        p = fleet.perf[a]
        base = same_region_s + float(fleet.last_mile_s[a])
        ag = Agent(a, fleet.agent_ids[a], int(fleet.region[a]), p.max_batch, p.tpot_s,
                   p.prefill, float(fleet.slow[a]), base / 2.0)  # type: ignore[arg-type]  # fmt: skip
        ag.record = AgentRecord(
            agent_id=ag.aid,
            gpus=(fleet.gpu[a],) * fleet.n_gpus[a],
            vram_gb=0.0,
            region=region_names[ag.region],
            models=frozenset({model}),
            price_out_per_mtok=float(fleet.price_mtok[a]),
            reputation=0.9,
            max_concurrency=p.max_batch,
        )
        agents.append(ag)

    n = len(wl)
    t_arr = wl.t
    user_region = wl.user_region
    if gateway_region is None:
        c2g_half = wl.access_rtt_s / 2.0
    else:
        c2g_half = (wl.access_rtt_s + wan_s[user_region, gateway_region]) / 2.0
    t_gw = t_arr + c2g_half
    order = np.argsort(t_gw, kind="stable")
    order_l = order.tolist()
    t_gw_l = t_gw.tolist()
    c2g_l = c2g_half.tolist()
    prompt_l = wl.prompt.tolist()
    out_l = wl.output.tolist()
    ureg_l = user_region.tolist()
    jit_l = wl.jitter.tolist()
    su = wl.straggle_u
    sx = wl.straggle_x
    sp_l = straggle_p.tolist()
    wan_l = wan_s.tolist()
    continent_of = [r.split("-")[0] for r in region_names]

    ttft = np.full(n, np.nan)
    e2e = np.full(n, np.nan)
    tpot = np.full(n, np.nan)
    status = np.full(n, OPEN, dtype=np.int8)
    reason = np.zeros(n, dtype=np.int8)
    attempts = np.zeros(n, dtype=np.int16)
    tokens = np.zeros(n, dtype=np.int32)

    heap: list[tuple[float, int, int, object, int]] = []
    seq = itertools.count()
    push = heapq.heappush
    pop = heapq.heappop
    hedging = policy.hedging
    failover = policy.failover
    hedge = getattr(policy, "hedge", None)
    counters = {"hedges": 0, "retries": 0, "failovers": 0}
    g = {"slots": 0, "cap": 0, "busy": 0, "online": 0}

    # --- agent mechanics --------------------------------------------------------------------

    def advance(ag: Agent, t: float) -> None:
        if ag.b:
            dt = t - ag.v_t
            lo = ag.v_t if ag.v_t > ag.stall_from else ag.stall_from
            hi = t if t < ag.busy_to else ag.busy_to
            if hi > lo:
                dt -= hi - lo
            if dt > 0:
                ag.V += dt / ag.tpot[ag.b]
        ag.v_t = t

    def resched(ag: Agent, t: float) -> None:
        ag.ver += 1
        h = ag.heap
        while h and h[0][2].state != DECODE:
            pop(h)
        if h:
            dv = h[0][0] - ag.V
            start = ag.busy_to if ag.busy_to > t else t
            push(heap, (start + (dv if dv > 0 else 0.0) * ag.tpot[ag.b], next(seq), EV_NEXT, ag,
                        ag.ver))  # fmt: skip

    def take_slot(ag: Agent) -> None:
        if ag.slots == 0:
            g["busy"] += 1
        ag.slots += 1
        g["slots"] += 1

    def free_slot(ag: Agent) -> None:
        ag.slots -= 1
        g["slots"] -= 1
        if ag.slots == 0:
            g["busy"] -= 1

    def admit(ag: Agent, att: Attempt, t: float) -> None:
        advance(ag, t)
        p = ag.prefill(att.prompt) * ag.slow * att.x
        if ag.busy_to <= t:
            ag.stall_from = t
            ag.busy_to = t + p
        else:
            ag.busy_to += p
        att.state = PREFILL
        take_slot(ag)
        push(heap, (ag.busy_to, next(seq), EV_PREFILL, att, 0))
        if ag.b:
            resched(ag, t)

    def fill(ag: Agent, t: float) -> None:
        w = ag.waiting
        while w and ag.slots < ag.max_batch and ag.state != DEAD:
            att = w.popleft()
            if att.state == WAIT:
                admit(ag, att, t)

    # --- request mechanics ------------------------------------------------------------------

    def dispatch(req: Request, t: float, prompt: int, out: int, base: int) -> bool:
        i = req.i
        cont = continent_of[ureg_l[i]]
        a = policy.pick(cont, req.tried)
        if a < 0:
            return False
        ag = agents[a]
        k = req.n_att
        req.n_att += 1
        req.tried.append(a)
        kk = k if k < 4 else 3
        x = float(sx[i, kk]) if su[i, kk] < sp_l[a] else 1.0
        greg = ureg_l[i] if gateway_region is None else gateway_region
        wan = wan_l[greg][ag.region] if greg != ag.region else 0.0
        owd = (wan * jit_l[i]) / 2.0 + ag.owd_base
        att = Attempt(req, ag, k, prompt, out, base, owd, x, t)
        req.live.append(att)
        policy.on_dispatch(a, ag.aid)
        push(heap, (t + owd, next(seq), EV_RECV, att, 0))
        return True

    def finish_request(req: Request, st: int, why: int, t_client: float) -> None:
        i = req.i
        status[i] = st
        reason[i] = why
        attempts[i] = req.n_att
        tokens[i] = req.tokens
        if st == OK:
            e2e[i] = t_client - t_arr[i]
            o = out_l[i]
            if o > 1:
                tpot[i] = (t_client - req.first) / (o - 1)
        elif req.first >= 0:
            e2e[i] = t_client - t_arr[i]
        nonlocal_open[0] -= 1
        # break the request <-> attempt cycles so reference counting frees them at once
        req.live.clear()
        req.winner = None
        reqs.pop(i, None)

    def end_attempt(att: Attempt, ok: bool, t: float) -> None:
        ag = att.agent
        ag.inflight.discard(att)
        policy.on_end(ag.i, ag.aid, ok, t)
        if ok:
            ag.oks += 1
        else:
            ag.fails += 1
        # Reputation (trust/'s job live): a Beta(4.5, 0.5) posterior mean of success, 0.9 at
        # first; only the rigpool policy reads it (min_reputation).
        if hedging and ag.fails and ag.indexed and (not ok or ag.oks % 8 == 0):
            index.heartbeat(ag.aid, t, reputation=(ag.oks + 4.5) / (ag.oks + ag.fails + 5.0))

    def fail_attempt(att: Attempt, t: float) -> None:
        """The attempt's agent is gone: pay for what was delivered, then retry or fail over."""
        req = att.req
        ag = att.agent
        produced = 0
        if att.state == DECODE:
            produced = 1 + int((ag.V - att.v0) / att.x)
            if produced > att.out - 1:
                produced = att.out - 1
        att.state = GONE
        end_attempt(att, False, t)
        if att in req.live:
            req.live.remove(att)
        if req.winner is att:
            req.tokens = att.base + produced
            ag.tokens += produced
            ag.earned += produced * price_l[ag.i]
            req.winner = None
        if req.live or status[req.i] != OPEN:
            return
        i = req.i
        if req.first < 0:
            if policy.may_retry(req.n_att):
                counters["retries"] += 1
                if not dispatch(req, t, prompt_l[i], out_l[i], 0):
                    finish_request(req, FAILED, R_NO_CAPACITY, t)
            else:
                finish_request(req, FAILED, R_RETRIES, t + c2g_l[i])
        elif failover and req.n_att < 6:
            counters["failovers"] += 1
            left = out_l[i] - req.tokens
            if left <= 0:
                finish_request(req, OK, 0, t + c2g_l[i])
            elif not dispatch(req, t, prompt_l[i] + req.tokens, left, req.tokens):
                finish_request(req, FAILED, R_NO_CAPACITY, t + c2g_l[i])
        else:
            finish_request(req, FAILED, R_MIDSTREAM, t + c2g_l[i])

    def cancel(att: Attempt, t: float) -> None:
        """A hedge lost: stop its work (a prefill in progress still finishes)."""
        ag = att.agent
        if att.state == WAIT:
            att.state = GONE
            end_attempt(att, True, t)
        elif att.state == PREFILL:
            att.cancel = True
        elif att.state == DECODE:
            if ag.state != DEAD:
                advance(ag, t)
                ag.b -= 1
                free_slot(ag)
                att.state = GONE
                end_attempt(att, True, t)
                fill(ag, t)
                resched(ag, t)
            else:
                att.state = GONE
                end_attempt(att, True, t)

    # --- agent lifecycle --------------------------------------------------------------------

    def go_online(ag: Agent, t: float) -> None:
        ag.state = ONLINE
        ag.since = t
        assert ag.record is not None
        index.join(ag.record)
        ag.indexed = True
        policy.on_join(ag.i, ag.aid)
        g["cap"] += ag.max_batch
        g["online"] += 1

    def go_offline(ag: Agent, t: float, state: int) -> None:
        if ag.indexed:
            index.leave(ag.aid)
            ag.indexed = False
            policy.on_leave(ag.i, ag.aid)
            g["cap"] -= ag.max_batch
            g["online"] -= 1
            ag.online_s += max(0.0, min(t, duration_s) - min(ag.since, duration_s))
        ag.state = state

    def die(ag: Agent, t: float, after: int) -> None:
        # The agent stops at once; the gateway only notices `detect_s` later (heartbeat
        # timeout), and until then it stays in the index and can still be routed to.
        advance(ag, t)
        ag.state = DEAD
        ag.after = after
        ag.ver += 1
        push(heap, (t + detect_s, next(seq), EV_DETECT, ag, 0))

    def detect(ag: Agent, t: float) -> None:
        go_offline(ag, t, DEAD)
        for att in list(ag.inflight):
            if att.state in (WAIT, PREFILL, DECODE):
                fail_attempt(att, t)
            else:
                ag.inflight.discard(att)
        g["slots"] -= ag.slots
        if ag.slots:
            g["busy"] -= 1
        ag.slots = ag.b = 0
        ag.heap.clear()
        ag.waiting.clear()
        ag.busy_to = ag.stall_from = ag.V = 0.0
        ag.v_t = t
        ag.state = ag.after
        if ag.state == RESTARTING:
            push(heap, (t + restart_s, next(seq), EV_RESTART, ag, 0))

    price_l = (fleet.price_mtok / 1e6).tolist()
    nonlocal_open = [0]

    # --- initial state and scheduled events ---------------------------------------------------

    for a in np.flatnonzero(fleet.online0).tolist():
        go_online(agents[a], 0.0)
    for t_e, h_e, k_e in zip(fleet.events_t.tolist(), fleet.events_host.tolist(),
                             fleet.events_kind.tolist(), strict=True):  # fmt: skip
        heap.append((t_e, next(seq), EV_CHURN, agents[h_e], k_e))
    step = duration_s / max(1, samples)
    for s in range(samples):
        heap.append(((s + 0.5) * step, next(seq), EV_SAMPLE, None, 0))
    heapq.heapify(heap)

    res = RunResult(
        policy_name, ttft, e2e, tpot, status, reason, attempts, tokens,
        np.zeros(n_ag, dtype=np.int64), np.zeros(n_ag), np.zeros(n_ag),
    )  # fmt: skip
    end_limit = duration_s + drain_limit_s
    ai = 0
    events = 0
    t = 0.0
    reqs: dict[int, Request] = {}
    next_progress = 0.0
    prog_step = duration_s / 200.0

    while True:
        if ai < n and (not heap or t_gw_l[order_l[ai]] <= heap[0][0]):
            i = order_l[ai]
            ai += 1
            t = t_gw_l[i]
            events += 1
            req = Request(i)
            reqs[i] = req
            nonlocal_open[0] += 1
            if not dispatch(req, t, prompt_l[i], out_l[i], 0):
                finish_request(req, FAILED, R_NO_CAPACITY, t + c2g_l[i])
                continue
            if hedging and hedge is not None:
                hedge.on_request(t)
                att0 = req.live[0]
                push(heap, (t + hedge.hedge_delay_s(att0.agent.aid), next(seq), EV_HEDGE, req, 0))
            if progress is not None and t >= next_progress:
                progress(t)
                next_progress = t + prog_step
            continue
        if not heap:
            break
        if ai >= n and nonlocal_open[0] == 0:
            break
        t, _, kind, obj, ver = pop(heap)
        if t > end_limit:
            break
        events += 1
        if kind == EV_NEXT:
            ag = obj  # type: ignore[assignment]
            if ver != ag.ver or ag.state == DEAD:
                continue
            advance(ag, t)
            h = ag.heap
            V = ag.V + 1e-9
            while h and (h[0][2].state != DECODE or h[0][0] <= V):
                _, _, att = pop(h)
                if att.state != DECODE:
                    continue
                att.state = DONE
                ag.b -= 1
                free_slot(ag)
                end_attempt(att, True, t)
                req = att.req
                if req.winner is att and status[req.i] == OPEN:
                    produced = att.out
                    req.tokens = att.base + produced
                    ag.tokens += produced
                    ag.earned += produced * price_l[ag.i]
                    req.live.remove(att)
                    finish_request(req, OK, 0, t + att.owd + c2g_l[req.i])
            fill(ag, t)
            resched(ag, t)
        elif kind == EV_RECV:
            att = obj  # type: ignore[assignment]
            if att.state != WAIT:
                continue
            ag = att.agent
            if ag.state == DEAD:
                ag.inflight.add(att)
                continue
            if ag.state != ONLINE:
                fail_attempt(att, t)
                continue
            ag.inflight.add(att)
            if ag.slots < ag.max_batch:
                admit(ag, att, t)
            else:
                ag.waiting.append(att)
        elif kind == EV_PREFILL:
            att = obj  # type: ignore[assignment]
            ag = att.agent
            if ag.state == DEAD or att.state != PREFILL:
                continue
            req = att.req
            if att.cancel or status[req.i] != OPEN:
                att.state = GONE
                free_slot(ag)
                end_attempt(att, True, t)
                fill(ag, t)
                continue
            t_client = t + att.owd + c2g_l[req.i]
            if req.first < 0:
                req.first = t_client
                ttft[req.i] = t_client - t_arr[req.i]
                req.winner = att
                for other in list(req.live):
                    if other is not att:
                        req.live.remove(other)
                        cancel(other, t)
            elif req.winner is None:
                req.winner = att  # a failover resumes the stream
            elif req.winner is not att:
                att.state = GONE
                free_slot(ag)
                end_attempt(att, True, t)
                fill(ag, t)
                continue
            policy.on_first_token(ag.i, ag.aid, t + att.owd - att.t0, t)
            advance(ag, t)
            if att.out <= 1:
                att.state = DONE
                free_slot(ag)
                end_attempt(att, True, t)
                req.tokens = att.base + 1
                ag.tokens += 1
                ag.earned += price_l[ag.i]
                req.live.remove(att)
                finish_request(req, OK, 0, t_client)
                fill(ag, t)
                if ag.b:
                    resched(ag, t)
                continue
            att.state = DECODE
            att.v0 = ag.V
            ag.b += 1
            heapq.heappush(ag.heap, (ag.V + (att.out - 1) * att.x, next(seq), att))
            resched(ag, t)
        elif kind == EV_HEDGE:
            req = obj  # type: ignore[assignment]
            if status[req.i] != OPEN or len(req.live) != 1 or hedge is None:
                continue
            if req.first >= 0 and req.first <= t + c2g_l[req.i]:
                continue
            if not hedge.try_take_hedge(t):
                continue
            i = req.i
            if dispatch(req, t, prompt_l[i], out_l[i], 0):
                counters["hedges"] += 1
        elif kind == EV_CHURN:
            ag = obj  # type: ignore[assignment]
            if ver == ON:
                if ag.state == OFFLINE:
                    go_online(ag, t)
                elif ag.state == DEAD:
                    ag.after = RESTARTING
            elif ver == OFF_GRACEFUL:
                if ag.state == ONLINE:
                    go_offline(ag, t, OFFLINE)
                elif ag.state == RESTARTING:
                    ag.state = OFFLINE
                elif ag.state == DEAD:
                    ag.after = OFFLINE
            elif ver == OFF_ABRUPT:
                if ag.state == ONLINE:
                    die(ag, t, OFFLINE)
                elif ag.state == RESTARTING:
                    ag.state = OFFLINE
                elif ag.state == DEAD:
                    ag.after = OFFLINE
            elif ver == CRASH and ag.state == ONLINE:
                die(ag, t, RESTARTING)
        elif kind == EV_DETECT:
            detect(obj, t)  # type: ignore[arg-type]
        elif kind == EV_RESTART:
            ag = obj  # type: ignore[assignment]
            if ag.state == RESTARTING:
                go_online(ag, t)
        elif kind == EV_SAMPLE:
            res.util_t.append(t)
            res.util_slots.append(g["slots"] / g["cap"] if g["cap"] else 0.0)
            res.util_busy.append(g["busy"] / g["online"] if g["online"] else 0.0)
            res.util_online.append(g["online"])

    # Whatever is still open at the limit ends here, with its reason.
    for i in np.flatnonzero(status == OPEN).tolist():
        req = reqs.get(i) or Request(i)
        status[i] = FAILED
        reason[i] = R_UNFINISHED
        attempts[i] = req.n_att
        tokens[i] = req.tokens
    for ag in agents:
        if ag.state == ONLINE:
            ag.online_s += max(0.0, duration_s - min(ag.since, duration_s))
        res.agent_tokens[ag.i] = ag.tokens
        res.agent_earned[ag.i] = ag.earned
        res.agent_online_s[ag.i] = ag.online_s
    res.events = events
    res.wall_s = _time.perf_counter() - wall0
    res.hedges = counters["hedges"]
    res.retries = counters["retries"]
    res.failovers = counters["failovers"]
    res.fallbacks = int(getattr(policy, "fallbacks", 0))
    res.sim_end_s = t
    if progress is not None:
        progress(duration_s)
    return res
