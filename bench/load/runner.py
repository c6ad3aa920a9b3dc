"""run_load(): set up, measure the hash rate, ramp, hold 70 %, tear down, report."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import uvloop

from bench.load import profile, setup
from bench.load.argon2_rate import machine_rate
from bench.load.driver import Driver, Window, summary_ms
from bench.load.journey import Backchannel, Inbox, RelyingParty
from bench.load.processes import Served, machine_busy_seconds, rss_kib

DATABASE = "enrs_load"


def _setting(name: str, default: str) -> str:
    return os.environ.get(f"BENCH_LOAD_{name}") or default


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _say(text: str) -> None:
    print(f"   {text}", flush=True)


class Settings:
    def __init__(self) -> None:
        self.server_url = _setting("DATABASE_URL", os.environ.get("ENRS_BENCH_DATABASE_URL")
                                   or "postgresql+psycopg://postgres@127.0.0.1:5432/test")
        self.redis_url = _setting("REDIS_URL", "redis://127.0.0.1:6379/14")
        self.accounts = int(_setting("ACCOUNTS", "150"))
        self.stage_seconds = float(_setting("STAGE_SECONDS", "20"))
        self.max_stages = int(_setting("MAX_STAGES", "16"))
        self.start = float(_setting("START", "0.15"))
        self.step = float(_setting("STEP", "0.06"))
        self.fixed_seconds = float(_setting("FIXED_SECONDS", "60"))
        self.p95_limit = float(_setting("P95_LIMIT_MS", "500")) / 1000
        # Past the limit the ramp goes on, to find where the portal stops keeping up, but
        # not into timeouts.
        self.p95_ceiling = float(_setting("P95_CEILING_MS", "3000")) / 1000
        self.stage_arrivals = int(_setting("STAGE_ARRIVALS", "25"))
        self.login_only_stages = int(_setting("LOGIN_ONLY_STAGES", "6"))
        self.workers = int(_setting("WORKERS", "4"))
        self.threads = int(_setting("THREADS", "8"))  # enrs serve --prod's default
        self.pyspy = _setting("PYSPY", "") not in ("", "0")
        self.calibration = int(_setting("CALIBRATION", "10"))
        # Once a ramp saturated, stages halfway between the last rate kept up with and
        # the first that was not: the step (a tenth of H) is coarse near the knee.
        self.refine = int(_setting("REFINE", "1"))


class PgBackends:
    """The PostgreSQL backend pids serving the load test's database (to count their CPU),
    through a connection of its own to the `postgres` database; reconnects when the
    shared cluster was restarted (then those pids are simply not counted for a while)."""

    def __init__(self, server_url: str) -> None:
        url = server_url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.url = url.rpartition("/")[0] + "/postgres"
        self.connection = None

    def __call__(self) -> list[int]:
        import psycopg

        try:
            if self.connection is None or self.connection.closed:
                self.connection = psycopg.connect(self.url, autocommit=True, connect_timeout=2)
            return [row[0] for row in self.connection.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (DATABASE,)).fetchall()]
        except psycopg.Error:
            self.close()
            return []

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            finally:
                self.connection = None


def _p95_password(window: Window) -> float | None:
    return window.report()["steps"]["login_password"].get("p95_ms")


def _saturated(window: Window, ceiling: float) -> str | None:
    """Why this stage ends the ramp (errors, or the portal no longer keeping up), or None."""
    report = window.report()
    if report["errors"]:
        return "errors: " + ", ".join(f"{k} ×{v}" for k, v in report["errors"].items())
    p95 = _p95_password(window)
    if p95 is None:
        return "no password step completed"
    if p95 > ceiling * 1000:
        return f"p95 of the password step {p95:.0f} ms > {ceiling * 1000:.0f} ms"
    # Falling behind: journeys pile up (more in flight at the end than at the start, beyond
    # the jitter of random arrivals), fewer logins completed than journeys arrived, and
    # some of those in flight have been waiting long (a burst of arrivals just before the
    # end of a stage is not a queue: those journeys are young).
    growth = window.in_flight_end - window.in_flight_start
    if (growth > max(4, 0.15 * window.arrivals) and report["full_logins"] < 0.9 * window.arrivals
            and window.in_flight_stale >= 2):
        return (f"falling behind: {report['full_logins']} logins completed for {window.arrivals} arrivals, "
                f"{growth} more journeys in flight at the end of the stage than at its start, "
                f"{window.in_flight_stale} of them running for long")
    return None


def server_side(log_path: Path, windows: list[Window]) -> dict[str, dict]:
    """The portal's own view (its JSON access log): duration per method + route, per window."""
    found: dict[str, dict[str, list[float]]] = {w.name: {} for w in windows}
    with log_path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.startswith("{") or '"event": "request"' not in line:
                continue
            try:
                entry = json.loads(line)
                at = datetime.fromisoformat(entry["time"]).timestamp()
            except (ValueError, KeyError):
                continue
            for window in windows:
                if window.wall_started <= at < window.wall_ended:
                    key = f"{entry['method']} {entry['route']}"
                    found[window.name].setdefault(key, []).append(entry["duration_ms"] / 1000)
    return {name: {key: summary_ms(values) for key, values in sorted(routes.items())}
            for name, routes in found.items()}


@dataclass
class Ramp:
    """Stages of rising arrival rate. `knee`: the highest-rate stage whose password step
    kept its p95 under the limit (500 ms); `sustained`: of the stages the portal kept up with
    (no error, journeys in flight not piling up), the one that served the most logins."""

    limit: float
    stages: list[Window] = field(default_factory=list)
    knee: Window | None = None
    sustained: Window | None = None
    stop_reason: str = ""

    def report(self, hash_rate: float) -> dict:
        def rates(window: Window | None) -> dict:
            if window is None:
                return {"stage": None}
            found = window.report()
            return {"stage": window.name, "offered_per_s": round(window.offered_per_s, 3),
                    "full_logins_per_s": found["full_logins_per_s"],
                    "sso_handoffs_per_s": found["sso_handoffs_per_s"],
                    "logins_ratio_to_hash_rate": round(found["full_logins_per_s"] / hash_rate, 3),
                    "p95_ms_password_step": found["steps"]["login_password"].get("p95_ms"),
                    "p95_ms_all_requests": found["all_requests"].get("p95_ms")}

        return {"stop": self.stop_reason, "stages": len(self.stages),
                f"last_stage_with_password_p95_le_{self.limit * 1000:.0f}_ms": rates(self.knee),
                "sustained": rates(self.sustained)}


def _line(window: Window) -> str:
    report = window.report()
    return (f"{window.name}: offered {window.offered_per_s:.2f}/s ({window.arrivals} arrivals), logins "
            f"{report['full_logins_per_s']:.2f}/s, SSO {report['sso_handoffs_per_s']:.2f}/s, p95 password "
            f"{report['steps']['login_password'].get('p95_ms')} ms, p95 all requests "
            f"{report['all_requests'].get('p95_ms')} ms, errors {sum(window.errors.values())}, others' CPU "
            f"{report['cpu_cores'].get('others')} cores")


async def _ramp(driver: Driver, settings: Settings, name: str, sso: bool, first: float, step: float,
                max_stages: int | None = None) -> Ramp:
    """Stages of rising rate until the portal is saturated (see _saturated); journeys in
    flight then finish. A stage lasts long enough for BENCH_LOAD_STAGE_ARRIVALS arrivals.
    Then BENCH_LOAD_REFINE stages bisect between the last rate kept up with and the first
    that was not, each after the backlog of the one before has drained."""
    max_stages = max_stages or settings.max_stages
    ramp = Ramp(settings.p95_limit, stop_reason=f"{max_stages} stages passed")
    served = {}  # full logins per second, per stage kept up with

    async def settle() -> None:  # journeys in flight finish, the backlog drains
        await driver.drain()
        await asyncio.sleep(3)

    async def stage(label: str, rate: float) -> str | None:
        seconds = max(settings.stage_seconds, min(settings.stage_arrivals / rate, 2 * settings.stage_seconds))
        window = await driver.offer(Window(label, rate, sso), seconds)
        ramp.stages.append(window)
        reason = _saturated(window, settings.p95_ceiling)
        p95 = _p95_password(window)
        _say(_line(window) + (f" → stop ({reason})" if reason else ""))
        if not reason and p95 is not None and p95 <= settings.p95_limit * 1000 \
                and (ramp.knee is None or rate > ramp.knee.offered_per_s):
            ramp.knee = window
        # The stage kept up with that served the most logins: a bisecting stage may keep
        # up at a higher offered rate yet serve fewer (random arrivals, the window's edges).
        if not reason:
            served[label] = window.report()["full_logins_per_s"]
            if ramp.sustained is None or served[label] > served[ramp.sustained.name]:
                ramp.sustained = window
        return reason

    kept_up_at = failed_at = None  # offered rates
    for index in range(max_stages):
        rate = first + step * index
        reason = await stage(f"{name} {index + 1}", rate)
        if reason:
            ramp.stop_reason = f"{name} {index + 1}: {reason}"
            failed_at = rate
            break
        kept_up_at = rate
    for refinement in range(settings.refine if failed_at is not None and kept_up_at is not None else 0):
        await settle()
        rate = (kept_up_at + failed_at) / 2
        if await stage(f"{name} bisect {refinement + 1}", rate):
            failed_at = rate
        else:
            kept_up_at = rate
    await settle()
    return ramp


async def _drive(settings: Settings, served: Served, accounts, ror: dict, smtp_port: int, rp_port: int,
                 hash_rate: float) -> dict:
    inbox, backchannel = Inbox(), Backchannel()
    smtp_server = await inbox.serve("127.0.0.1", smtp_port)
    rp_server = await backchannel.serve("127.0.0.1", rp_port)
    rp = RelyingParty(issuer=ror["issuer"], client_id=ror["client_id"], client_secret=ror["client_secret"],
                      base_url=ror["base_url"])
    pg_pids = PgBackends(settings.server_url)
    await rp.load_keys()
    driver = Driver(served.base_url, accounts, inbox, rp, served, pg_pids)
    sampler = asyncio.create_task(driver.sample_memory())
    watcher = asyncio.create_task(driver.watch_loop())
    step = settings.step * hash_rate
    try:
        # 0. One journey at a time: latency without queueing, CPU per step.
        calibration = await driver.calibrate(settings.calibration)
        _say(f"one journey at a time: {calibration['per_journey_web_cpu_ms']:.0f} ms of web CPU, "
             f"{calibration['per_journey_postgres_cpu_ms']:.0f} ms of PostgreSQL CPU per journey")
        # 1. The whole journey, rising.
        journey = await _ramp(driver, settings, "journey", True, settings.start * hash_rate, step)
        # 2. The whole journey at 70 % of the rate it sustained.
        base = journey.sustained or journey.stages[0]
        spy = profile.start(served.server.pid, settings.fixed_seconds, served.log_dir / "py-spy.txt") \
            if settings.pyspy else None
        fixed = await driver.offer(Window("fixed 70 %", 0.7 * base.offered_per_s), settings.fixed_seconds)
        fixed_left = await driver.drain()
        if spy is not None:
            await asyncio.to_thread(spy.wait, 60)
        _say(_line(fixed))
        await asyncio.sleep(3)
        # 3. The login alone (to the dashboard), which costs less: rising from one step
        #    above the whole journey's sustained rate.
        logins = await _ramp(driver, settings, "login only", False, base.offered_per_s + step, step,
                             max_stages=settings.login_only_stages)
        await asyncio.sleep(5)  # the last back-channel notices and mail
    finally:
        sampler.cancel()
        watcher.cancel()
        await rp.close()
        smtp_server.close()
        rp_server.close()
        pg_pids.close()
    return {"calibration": calibration, "journey": journey, "fixed": fixed, "logins": logins, "journeys_still_running_after_fixed": fixed_left,
            "driver": driver, "inbox": inbox, "backchannel": backchannel,
            "profile": profile.summarise(served.log_dir / "py-spy.txt") if settings.pyspy else None}


def run_load() -> dict:
    settings = Settings()
    workdir = Path(tempfile.mkdtemp(prefix="enrs-load-"))
    port, smtp_port, rp_port = _free_port(), _free_port(), _free_port()
    setup.flush_redis(settings.redis_url)
    database_url = setup.create_database(settings.server_url, DATABASE)
    env = {
        "ENRS_ENV": "development",  # plain HTTP on loopback; otherwise as in production
        "ENRS_INSTANCE_DIR": str(workdir / "instance"),
        "ENRS_SECRET_KEY": setup.SECRET_KEY,
        "ENRS_BASE_URL": f"http://127.0.0.1:{port}",
        "ENRS_DATABASE_URL": database_url,
        "ENRS_REDIS_URL": settings.redis_url,
        "ENRS_MAIL_URL": f"smtp://127.0.0.1:{smtp_port}",
        "ENRS_LOG_FORMAT": "json",
    }
    served = Served(env, port, settings.workers, settings.threads, workdir / "logs")
    try:
        started = time.perf_counter()
        ror = setup.seed(env, f"http://127.0.0.1:{rp_port}")
        accounts = setup.create_accounts(env, settings.accounts)
        setup_seconds = time.perf_counter() - started
        _say(f"database {DATABASE}, {len(accounts)} accounts, ROR client {ror['client_id']} "
             f"({setup_seconds:.1f} s); logs in {workdir / 'logs'}")
        served.start()
        served.warm_up()
        busy_before = _busy_cores(3.0)
        idle_rss = {pid: rss_kib(pid) for pid in served.worker_pids()}
        workers_use_huge_pages = served.huge_pages()
        workers_argon2 = served.argon2_builds()
        single = machine_rate(1)
        before = machine_rate(2)
        as_workers_before = machine_rate(2, huge_pages=True, portal_hasher=True, pypi_wheel=False)
        _say(f"Argon2id: {single['total']:.2f}/s in one process, {before['total']:.2f}/s in two together "
             f"({as_workers_before['total']:.2f}/s as the workers hash)")
        # uvloop: the driver shares the portal's cores, the lighter its event loop the better.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            # The ramp is scaled on the rate as the workers hash: with libargon2 built for
            # this CPU, the portal serves more logins than the bare rate (idp/argon2_build.py).
            outcome = runner.run(_drive(settings, served, accounts, ror, smtp_port, rp_port,
                                        as_workers_before["total"]))
        end_rss = {pid: rss_kib(pid) for pid in served.worker_pids()}
        served.stop()
        # In the other order than before: the drift cancels out.
        as_workers_after = machine_rate(2, huge_pages=True, portal_hasher=True, pypi_wheel=False)
        after = machine_rate(2)
        hash_rate = (before["total"] + after["total"]) / 2
        results = _results(settings, outcome, served, hash_rate, single, before, after, idle_rss, end_rss,
                           as_workers_before["total"],
                           setup_seconds, workdir)
        _add_workers_hash_rate(results, before, as_workers_before, as_workers_after, workers_use_huge_pages,
                               workers_argon2)
        results["machine"]["busy_cores_before_load"] = busy_before  # other people's work: the portal is idle
        return results
    finally:
        served.stop()
        setup.drop_database(settings.server_url, DATABASE)
        setup.flush_redis(settings.redis_url)


def _add_workers_hash_rate(results: dict, bare: dict, before: dict, after: dict, workers_use_huge_pages: bool,
                           workers_argon2: list[str]) -> None:
    """The hash rate as the portal's workers hash (huge pages for the hash's memory, the
    lanes in the calling thread, libargon2 built for this CPU), beside the bare one. The
    issue's ratio is against the bare rate, argon2-cffi as any program runs it (PyPI's
    wheel); against this one, it shows what a login costs besides the hash itself."""
    own = (before["total"] + after["total"]) / 2
    hashes = results["argon2id_verifications_per_second"]
    hashes.update({"both_cores_as_workers_before": before["total"], "both_cores_as_workers_after": after["total"],
                   "both_cores_as_workers": round(own, 3),
                   "cpu_seconds_per_hash_two_processes": bare["cpu_seconds_per_hash"],
                   "cpu_seconds_per_hash_two_processes_as_workers": before["cpu_seconds_per_hash"],
                   "portal_workers_use_huge_pages": workers_use_huge_pages,
                   "argon2_build_bare": bare["argon2_build"], "argon2_build_as_workers": before["argon2_build"],
                   "portal_workers_argon2_build": workers_argon2})
    best = results.get("best_full_logins_per_s")
    results["targets_other_readings"]["sustained_logins_ge_0_8_hash_rate_as_workers"] = bool(best and best >= 0.8 * own)
    results["logins_ratio"] = {"best_full_logins_per_s": best,
                               "to_bare_hash_rate": round(best / hashes["both_cores"], 3) if best else None,
                               "to_hash_rate_as_workers": round(best / own, 3) if best else None}


def _busy_cores(seconds: float) -> float:
    busy, total = machine_busy_seconds()
    time.sleep(seconds)
    busy_after, total_after = machine_busy_seconds()
    return round((busy_after - busy) / (total_after - total) * (os.cpu_count() or 1), 2)


def _cpu_model(window: dict, argon2_cpu: float, cores: int) -> dict:
    """What a journey costs in CPU seconds (whatever else the machine runs), and the rate
    the machine's cores would sustain for the portal alone at that cost."""
    per = window.get("cpu_seconds_per_journey") or {}
    if not per:
        return {}
    server = per["portal"] + per["worker"] + per["postgres"]
    return {
        "window": window["name"],
        "argon2_cpu_seconds_per_hash": argon2_cpu,
        "cpu_seconds_per_journey": per,
        "argon2_share_of_portal_cpu": round(argon2_cpu / per["portal"], 3) if per["portal"] else None,
        "journeys_per_s_all_cores_for_the_server": round(cores / server, 2) if server else None,
        "hashes_per_s_all_cores": round(cores / argon2_cpu, 2) if argon2_cpu else None,
    }


def _results(settings: Settings, outcome: dict, served: Served, hash_rate: float, single: dict, before: dict,
             after: dict, idle_rss: dict, end_rss: dict, ramp_scale: float, setup_seconds: float,
             workdir: Path) -> dict:
    journey: Ramp = outcome["journey"]
    logins: Ramp = outcome["logins"]
    fixed: Window = outcome["fixed"]
    driver: Driver = outcome["driver"]
    windows = [*journey.stages, fixed, *logins.stages]
    fixed_report = fixed.report()
    # Below saturation: the stages that passed (none had an error, or the ramp would have
    # stopped there) and the fixed phase.
    errors_below = sum(fixed.errors.values())
    rss_max = {pid: max(values) for pid, values in driver.rss_samples.items()}
    pss_max = {pid: max(values) for pid, values in driver.pss_samples.items()}
    every_request_p95 = fixed_report["all_requests"].get("p95_ms")
    step_p95s = {step: s["p95_ms"] for step, s in fixed_report["steps"].items() if step != "mail" and s.get("n")}
    best_logins = max((r.sustained.report()["full_logins_per_s"] for r in (journey, logins) if r.sustained),
                      default=None)
    return {
        "machine": {"cores": os.cpu_count(), "load_average_at_end": os.getloadavg()},
        "best_full_logins_per_s": best_logins,
        "setup": {"accounts": settings.accounts, "setup_seconds": round(setup_seconds, 1),
                  "workers": settings.workers, "threads": settings.threads, "database": "postgresql",
                  "stage_seconds": settings.stage_seconds, "fixed_seconds": settings.fixed_seconds,
                  "ramp_start_and_step_per_s": [round(settings.start * ramp_scale, 3),
                                                round(settings.step * ramp_scale, 3)],
                  "ramp_scale": "the hash rate as the workers hash, before the load",
                  "arrivals": "random instants, exact count per window", "logs": str(workdir / "logs")},
        "argon2id_verifications_per_second": {
            "one_process": single["total"], "both_cores_before": before["total"],
            "both_cores_after": after["total"], "both_cores": round(hash_rate, 3),
            "cpu_seconds_per_hash": single["cpu_seconds_per_hash"]},
        "one_journey_at_a_time": outcome["calibration"],
        "whole_journey_ramp": journey.report(hash_rate),
        "fixed_70_percent": {
            "offered_journeys_per_s": round(fixed.offered_per_s, 3),
            "full_logins_per_s": fixed_report["full_logins_per_s"],
            "sso_handoffs_per_s": fixed_report["sso_handoffs_per_s"],
            "ratio_to_hash_rate": round(fixed.offered_per_s / hash_rate, 3),
            "p95_ms_per_step": step_p95s,
            "p95_ms_all_requests": fixed_report["all_requests"].get("p95_ms"),
            "errors": fixed_report["errors"],
            "journeys_still_running_after": outcome["journeys_still_running_after_fixed"],
        },
        "login_only_ramp": logins.report(hash_rate),
        "cpu_model": {
            "whole_journey": _cpu_model(fixed_report, single["cpu_seconds_per_hash"], os.cpu_count() or 1),
            "login_only": _cpu_model((logins.sustained or logins.stages[-1]).report(), single["cpu_seconds_per_hash"],
                                     os.cpu_count() or 1),
        },
        "targets": {
            "sustained_logins_ge_0_8_hash_rate": bool(best_logins and best_logins >= 0.8 * hash_rate),
            "p95_lt_300_ms_every_step_at_70_percent": bool(step_p95s) and max(step_p95s.values()) < 300,
            "zero_errors_below_saturation": errors_below == 0,
            "rss_lt_150_mib_per_worker": bool(rss_max) and max(rss_max.values()) < 150 * 1024,
        },
        # Other readings of the same targets, reported beside the strict ones above: the p95
        # over every request of the fixed phase (not step by step), and the memory a worker
        # takes when the pages every worker shares are counted once (PSS).
        "targets_other_readings": {
            "p95_all_requests_lt_300_ms_at_70_percent": every_request_p95 is not None and every_request_p95 < 300,
            "pss_lt_150_mib_per_worker": bool(pss_max) and max(pss_max.values()) < 150 * 1024,
        },
        "memory_mib_per_worker": {
            "idle_after_warm_up": sorted(round(v[0] / 1024, 1) for v in idle_rss.values() if v),
            "max_sampled_under_load": sorted(round(v / 1024, 1) for v in rss_max.values()),
            "pss_max_sampled_under_load": sorted(round(v / 1024, 1) for v in pss_max.values()),
            "at_end": sorted(round(v[0] / 1024, 1) for v in end_rss.values() if v),
            "peak_vmhwm_at_end": sorted(round(v[1] / 1024, 1) for v in end_rss.values() if v),
            "worker_processes_seen": len(driver.worker_pids_seen),
        },
        "mail": {"received": outcome["inbox"].received, "unreadable": outcome["inbox"].unreadable},
        # Every completed whole journey ended with a portal logout of a session that opened the ROR.
        "backchannel_logout": {"whole_journeys_completed": driver.totals["sso_journey"],
                               "notices_received": outcome["backchannel"].received,
                               "refused": outcome["backchannel"].refused},
        "windows": [w.report() for w in windows],
        **({"profile_fixed_phase": outcome["profile"]} if outcome["profile"] else {}),
        "server_side": server_side(served.server_log, windows),
    }
