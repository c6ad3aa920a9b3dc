"""The open-model driver: journeys arrive at a given rate (random instants, as
independent people arrive) whatever the portal's state, each on an account that is not in
a journey already; what they measure is gathered per window (a ramp stage, the
fixed-rate phase), by the time each step finished."""
from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from bench.load.journey import HTTP_STEPS, Inbox, JourneyError, RelyingParty, journey
from bench.load.processes import Served, cpu_seconds, machine_busy_seconds, pss_kib, rss_kib, thread_cpu_seconds
from bench.load.setup import Account


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summary_ms(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(ordered), "p50_ms": round(percentile(ordered, 0.50) * 1000, 1),
            "p95_ms": round(percentile(ordered, 0.95) * 1000, 1),
            "p99_ms": round(percentile(ordered, 0.99) * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1)}


STALE_JOURNEY_SECONDS = 3.0


@dataclass
class Window:
    name: str
    offered_per_s: float
    sso: bool = True  # the whole journey, or the login alone
    started: float = 0.0  # perf_counter
    ended: float = 0.0
    wall_started: float = 0.0  # time.time(), to match the portal's log lines
    wall_ended: float = 0.0
    arrivals: int = 0
    samples: dict[str, list[float]] = field(default_factory=dict)
    marks: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    cpu_start: dict[str, dict[int, float]] = field(default_factory=dict)
    cpu_end: dict[str, dict[int, float]] = field(default_factory=dict)
    rss_max_kib: dict[int, int] = field(default_factory=dict)
    in_flight_start: int = 0
    in_flight_end: int = 0
    in_flight_stale: int = 0  # of those, journeys running for more than STALE_JOURNEY_SECONDS
    loop_lag: list[float] = field(default_factory=list)  # the driver's own event-loop delays

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def rate(self, mark: str) -> float:
        return self.marks[mark] / self.seconds if self.seconds else 0.0

    def report(self) -> dict:
        seconds = self.seconds
        cpu, per_journey = {}, {}
        if self.cpu_start and self.cpu_end:
            # Per process: one that started during the window counts from zero; one that
            # ended during it is lost (gunicorn recycling a worker, a pooled connection closed).
            used = {name: sum(max(0.0, value - self.cpu_start[name].get(pid, 0.0))
                              for pid, value in self.cpu_end[name].items()) for name in self.cpu_start}
            # The web processes' CPU split: their threads alive at the window's end (a
            # thread started during it counts from zero), and the rest, Argon2's lanes.
            threads = used.pop("portal_threads", 0.0)
            used["others"] = used.pop("machine") - sum(used.values())
            used["portal_threads"], used["portal_hash_lanes"] = threads, max(0.0, used["portal"] - threads)
            cpu = {name: round(value / seconds, 2) for name, value in used.items()}
            if self.marks["journey"]:
                # CPU seconds the window's work cost, per completed journey (load-independent).
                per_journey = {name: round(used[name] / self.marks["journey"], 3)
                               for name in ("portal", "portal_hash_lanes", "portal_threads", "worker", "postgres",
                                            "driver") if name in used}
        steps = {step: summary_ms(self.samples.get(step, [])) for step in (*HTTP_STEPS, "mail")}
        every_request = [v for step in HTTP_STEPS for v in self.samples.get(step, [])]
        return {
            "name": self.name,
            "journey": "login + SSO + logout" if self.sso else "login only (to the dashboard)",
            "offered_journeys_per_s": round(self.offered_per_s, 3),
            "seconds": round(seconds, 1),
            "arrivals": self.arrivals,
            "full_logins": self.marks["full_login"],
            "full_logins_per_s": round(self.rate("full_login"), 3),
            "sso_handoffs_per_s": round(self.rate("sso_handoff"), 3),
            "journeys_completed": self.marks["journey"],
            "in_flight_start_end": [self.in_flight_start, self.in_flight_end],
            "in_flight_stale_at_end": self.in_flight_stale,
            "errors": dict(self.errors),
            "keepalive_retries": self.marks["keepalive_retry"],
            "steps": steps,
            "all_requests": summary_ms(every_request),
            "journey_duration": summary_ms(self.samples.get("journey", [])),
            "cpu_cores": cpu,
            "cpu_seconds_per_journey": per_journey,
            # How late the driver's event loop ran a 50 ms timer: the part of the measured
            # latencies that is the driver's, not the portal's.
            "driver_loop_lag": summary_ms(self.loop_lag),
            "rss_max_mib_per_worker": sorted(round(v / 1024, 1) for v in self.rss_max_kib.values()),
        }


@dataclass
class Driver:
    portal: str
    accounts: list[Account]
    inbox: Inbox
    rp: RelyingParty
    served: Served
    pg_pids: callable  # () -> list of PostgreSQL backend pids of the load test's database
    seed: int = 20261102
    free: deque = field(init=False)
    window: Window | None = None
    in_flight: set = field(default_factory=set)
    launched_at: dict = field(default_factory=dict)  # task → perf_counter at its launch
    rss_samples: dict[int, list[int]] = field(default_factory=dict)
    pss_samples: dict[int, list[int]] = field(default_factory=dict)
    worker_pids_seen: set = field(default_factory=set)
    totals: Counter = field(default_factory=Counter)  # every window, and between them
    sso: bool = True

    def __post_init__(self) -> None:
        self.free = deque(self.accounts)
        self.random = random.Random(self.seed)

    # -- measuring ------------------------------------------------------------------------------

    def record(self, step: str, seconds: float, _finished: float) -> None:
        if self.window is not None:
            self.window.samples.setdefault(step, []).append(seconds)

    def mark(self, milestone: str) -> None:
        self.totals[milestone] += 1
        if self.window is not None:
            self.window.marks[milestone] += 1

    def _cpu(self) -> dict[str, dict[int, float]]:
        """CPU seconds so far, per process, of each party ("machine": all cores, busy)."""

        def of(pids) -> dict[int, float]:
            found = {pid: cpu_seconds(pid) for pid in pids}
            return {pid: value for pid, value in found.items() if value is not None}

        web = [self.served.server.pid, *self.served.worker_pids()]
        return {"machine": {0: machine_busy_seconds()[0]},
                "portal": of(web),
                "portal_threads": {tid: value for pid in web for tid, value in thread_cpu_seconds(pid).items()},
                "worker": of([self.served.worker.pid]), "postgres": of(self.pg_pids()),
                "driver": {0: time.process_time()}}

    async def calibrate(self, journeys: int) -> dict:
        """One whole journey at a time, nothing else in flight: each step's latency without
        queueing, and the CPU the portal's web processes and PostgreSQL spent on it (read
        from /proc between steps; CPU time, so other load on the machine hardly matters).
        Work a step leaves to a background thread lands in the interval after it: the
        mail delivery after the password step in "mail", the back-channel logout notice
        in "after_logout" (half a second after the logout)."""
        cpu: dict[str, list[tuple[float, float]]] = {}
        latency: dict[str, list[float]] = {}
        errors: Counter = Counter()

        def snapshot() -> tuple[dict[int, float], dict[int, float]]:
            web = {pid: cpu_seconds(pid) for pid in [self.served.server.pid, *self.served.worker_pids()]}
            database = {pid: cpu_seconds(pid) for pid in self.pg_pids()}
            return ({k: v for k, v in web.items() if v is not None},
                    {k: v for k, v in database.items() if v is not None})

        last = [snapshot()]

        def record(step: str, seconds: float, _finished: float) -> None:
            now = snapshot()
            spent = tuple(sum(max(0.0, value - before.get(pid, 0.0)) for pid, value in current.items())
                          for current, before in zip(now, last[0], strict=True))
            cpu.setdefault(step, []).append(spent)
            latency.setdefault(step, []).append(seconds)
            last[0] = now

        for _ in range(journeys):
            account = self.free.popleft()
            last[0] = snapshot()
            try:
                await journey(self.portal, account, self.inbox, self.rp, record, lambda _milestone: None, True)
                self.totals["sso_journey"] += 1
                await asyncio.sleep(0.5)
                record("after_logout", 0.0, 0.0)
            except JourneyError as error:
                errors[f"{error.step}:{error.kind}"] += 1
            finally:
                self.free.append(account)
        steps = {}
        for step, values in cpu.items():
            steps[step] = {
                "web_cpu_ms": round(sum(v[0] for v in values) / len(values) * 1000, 1),
                "postgres_cpu_ms": round(sum(v[1] for v in values) / len(values) * 1000, 1),
                "latency_p50_ms": summary_ms(latency[step]).get("p50_ms") if step != "after_logout" else None,
            }
        total_web = sum(s["web_cpu_ms"] for s in steps.values())
        total_pg = sum(s["postgres_cpu_ms"] for s in steps.values())
        return {"journeys": journeys, "errors": dict(errors), "per_step": steps,
                "per_journey_web_cpu_ms": round(total_web, 1), "per_journey_postgres_cpu_ms": round(total_pg, 1)}

    async def watch_loop(self, period: float = 0.05) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(period)
            if self.window is not None:
                self.window.loop_lag.append(max(0.0, time.perf_counter() - started - period))

    async def sample_memory(self) -> None:
        """Every second, the resident memory of each gunicorn worker (what `ps -o rss` shows)
        and its proportional share (PSS)."""
        while True:
            for pid in self.served.worker_pids():
                self.worker_pids_seen.add(pid)
                found = rss_kib(pid)
                if found is None:
                    continue
                self.rss_samples.setdefault(pid, []).append(found[0])
                pss = pss_kib(pid)
                if pss is not None:
                    self.pss_samples.setdefault(pid, []).append(pss)
                if self.window is not None:
                    self.window.rss_max_kib[pid] = max(self.window.rss_max_kib.get(pid, 0), found[0])
            await asyncio.sleep(1.0)

    # -- running -----------------------------------------------------------------------------------

    async def _one(self, account: Account) -> None:
        started, sso = time.perf_counter(), self.sso
        try:
            await journey(self.portal, account, self.inbox, self.rp, self.record, self.mark, sso)
        except JourneyError as error:
            if self.window is not None:
                self.window.errors[f"{error.step}:{error.kind}"] += 1
        except Exception as error:  # noqa: BLE001 - a driver bug must show, not stop the run
            if self.window is not None:
                self.window.errors[f"driver:{type(error).__name__}"] += 1
        else:
            self.record("journey", time.perf_counter() - started, time.perf_counter())
            self.mark("journey")
            if sso:
                self.totals["sso_journey"] += 1
        finally:
            self.free.append(account)

    def _launch(self) -> None:
        if self.window is not None:
            self.window.arrivals += 1
        if not self.free:
            if self.window is not None:
                self.window.errors["driver:no_free_account"] += 1
            return
        task = asyncio.create_task(self._one(self.free.popleft()))
        self.in_flight.add(task)
        self.launched_at[task] = time.perf_counter()
        task.add_done_callback(self.in_flight.discard)
        task.add_done_callback(self._forget_launch)

    def _forget_launch(self, task) -> None:
        self.launched_at.pop(task, None)

    def in_flight_older_than(self, seconds: float) -> int:
        limit = time.perf_counter() - seconds
        return sum(1 for task in self.in_flight if self.launched_at.get(task, limit) < limit)

    async def offer(self, window: Window, seconds: float) -> Window:
        """Arrivals at window.offered_per_s for `seconds`; the window closes at the end
        (journeys still running then count in the next window, or in none)."""
        self.window, self.sso = window, window.sso
        window.cpu_start = self._cpu()
        window.in_flight_start = len(self.in_flight)
        window.started, window.wall_started = time.perf_counter(), time.time()
        end = window.started + seconds
        # A Poisson process conditioned on its count: exactly rate × seconds arrivals, at
        # uniformly random instants (so as bursty as independent people), so that every
        # window offers its nominal rate instead of a 20-second sample of it.
        count = round(window.offered_per_s * seconds)
        for at in sorted(window.started + self.random.random() * seconds for _ in range(count)):
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self._launch()
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        window.ended, window.wall_ended = time.perf_counter(), time.time()
        window.cpu_end = self._cpu()
        window.in_flight_end = len(self.in_flight)
        # Journeys still running long after they began: a queue building up, not arrivals
        # that happened to land near the end (an unhurried journey takes well under 1 s).
        window.in_flight_stale = self.in_flight_older_than(STALE_JOURNEY_SECONDS)
        self.window = None
        return window

    async def drain(self, timeout: float = 60.0) -> int:
        """Wait for the journeys in flight; how many were still running at `timeout`."""
        if self.in_flight:
            _done, pending = await asyncio.wait(set(self.in_flight), timeout=timeout)
            return len(pending)
        return 0
