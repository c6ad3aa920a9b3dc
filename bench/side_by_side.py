"""Two ways of running the portal's workers, side by side in one run, so that the
machine's drift (its speed moves by a quarter within minutes here) cancels out. Not a
benchmark itself: bench/huge_pages.py and bench/argon2_threads.py say what they compare.

- the Argon2id rate of the machine (one process per core, together) for each variant's
  way of hashing, alternated over several rounds;
- the logins the portal serves with the machine full, its 4 workers run each way, in
  rounds ordered ABBA, each window offering more logins than the portal can serve (the
  login alone, to the dashboard, as the load test's last phase), with the CPU each login
  costs.

Knobs: BENCH_SIDE_ROUNDS (2, each with both variants, in alternate order),
BENCH_SIDE_SECONDS (30), BENCH_SIDE_OFFERED (0.75: the rate offered to each variant, as a
fraction of its own hash rate, which logins never reach: each is offered about a third more
than it serves, not the one far more than the other); the database and Redis as for the
load test (bench/load).
"""
from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.load import setup
from bench.load.argon2_rate import machine_rate
from bench.load.driver import Driver, Window
from bench.load.journey import Inbox, RelyingParty
from bench.load.processes import Served
from bench.load.runner import DATABASE, PgBackends, Settings, _free_port, _say


@dataclass(frozen=True)
class Variant:
    """A way of running the workers: variables for them (ENRS_* settings, or others such
    as GLIBC_TUNABLES, which they inherit), and how machine_rate hashes the same way."""
    environment: dict[str, str]
    hashing: dict[str, bool]


def _setting(name: str, default: str) -> str:
    return os.environ.get(f"BENCH_SIDE_{name}") or default


async def _saturated_logins(served: Served, accounts, ror: dict, smtp_port: int, rate: float,
                            seconds: float) -> dict:
    inbox = Inbox()
    smtp_server = await inbox.serve("127.0.0.1", smtp_port)
    rp = RelyingParty(issuer=ror["issuer"], client_id=ror["client_id"], client_secret=ror["client_secret"],
                      base_url=ror["base_url"])
    pg_pids = PgBackends(Settings().server_url)
    try:
        driver = Driver(served.base_url, accounts, inbox, rp, served, pg_pids)
        sampler = asyncio.create_task(driver.sample_memory())
        try:
            window = await driver.offer(Window("login only", rate, sso=False), seconds)
            await driver.drain(120)
        finally:
            sampler.cancel()
        report = window.report()
    finally:
        await rp.close()
        smtp_server.close()
        pg_pids.close()
    # The portal's errors (a step's status or content) and the driver's own (no account
    # free: more logins in flight than accounts) are told apart.
    return {"full_logins_per_s": report["full_logins_per_s"], "errors": sum(report["errors"].values()),
            "errors_by_kind": report["errors"],
            "portal_cpu_ms_per_login": round(report["cpu_seconds_per_journey"].get("portal", 0) * 1000, 1),
            "portal_cores": report["cpu_cores"].get("portal"),
            "rss_max_mib_per_worker": report["rss_max_mib_per_worker"]}


def compare(variants: dict[str, Variant], prefix: str) -> dict:
    """Both variants (first, second) side by side; the gains are the first's over the second's."""
    settings = Settings()
    rounds = max(1, int(_setting("ROUNDS", "2")))
    cores = os.cpu_count() or 2
    seconds = float(_setting("SECONDS", "30"))
    offered = float(_setting("OFFERED", "0.75"))
    workdir = Path(tempfile.mkdtemp(prefix=f"enrs-{prefix}-"))
    port, smtp_port, rp_port = _free_port(), _free_port(), _free_port()
    setup.flush_redis(settings.redis_url)
    database_url = setup.create_database(settings.server_url, DATABASE)
    env = {
        "ENRS_ENV": "development", "ENRS_INSTANCE_DIR": str(workdir / "instance"),
        "ENRS_SECRET_KEY": setup.SECRET_KEY, "ENRS_BASE_URL": f"http://127.0.0.1:{port}",
        "ENRS_DATABASE_URL": database_url, "ENRS_REDIS_URL": settings.redis_url,
        "ENRS_MAIL_URL": f"smtp://127.0.0.1:{smtp_port}", "ENRS_LOG_FORMAT": "json",
    }
    names = list(variants)
    hashes: dict[str, list[float]] = {name: [] for name in names}
    bare: list[float] = []
    logins: dict[str, list[dict]] = {name: [] for name in names}
    inherited = {key for variant in variants.values() for key in variant.environment if not key.startswith("ENRS_")}
    saved = {key: os.environ.get(key) for key in inherited}
    builds: dict[str, set] = {name: set() for name in ["bare", *names]}

    def restore() -> None:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def hash_rates(order: list[str]) -> None:
        for name, hashing, into in [("bare", {}, bare), *((n, variants[n].hashing, hashes[n]) for n in order)]:
            found = machine_rate(cores, **hashing)
            into.append(found["total"])
            builds[name].add(str(found["argon2_build"]))  # what the processes did load, not what was meant

    try:
        ror = setup.seed(env, f"http://127.0.0.1:{rp_port}")
        accounts = setup.create_accounts(env, settings.accounts)
        for index in range(rounds):
            hash_rates(names if index % 2 == 0 else names[::-1])
        bare_rate = statistics.mean(bare)
        offered_rates = {name: offered * statistics.mean(hashes[name]) for name in names}
        _say(f"Argon2id on both cores: bare {bare_rate:.2f}/s, "
             + ", ".join(f"{name} {statistics.mean(hashes[name]):.2f}/s" for name in names))
        order = [name for index in range(rounds) for name in (names if index % 2 == 0 else names[::-1])]
        for name in order:
            environment = variants[name].environment
            for key in inherited:  # the server inherits this process's environment (setup.process_env)
                os.environ.pop(key, None)
            os.environ.update({k: v for k, v in environment.items() if not k.startswith("ENRS_")})
            served = Served({**env, **{k: v for k, v in environment.items() if k.startswith("ENRS_")}}, port,
                            settings.workers, settings.threads, workdir / "logs" / name.replace(" ", "-"))
            try:
                served.start()
                served.warm_up()
                uses = served.huge_pages()
                argon2 = served.argon2_builds()
                result = asyncio.run(_saturated_logins(served, accounts, ror, smtp_port, offered_rates[name],
                                                       seconds))
            finally:
                served.stop()
                restore()  # the hash rates measured next run in this process's own environment
            logins[name].append({**result, "workers_use_huge_pages": uses, "workers_argon2_build": argon2})
            _say(f"{name}: {result['full_logins_per_s']:.2f} logins/s, {result['portal_cpu_ms_per_login']:.0f} ms "
                 f"of web CPU each, errors {result['errors_by_kind'] or 0} (huge pages in the workers: {uses}; "
                 f"libargon2: {', '.join(argon2)})")
            time.sleep(3)
        for index in range(rounds):
            hash_rates(names[::-1] if index % 2 == 0 else names)
    finally:
        restore()
        setup.drop_database(settings.server_url, DATABASE)
        setup.flush_redis(settings.redis_url)
    bare_rate = statistics.mean(bare)
    summary = {name: {"full_logins_per_s_mean": round(statistics.mean(r["full_logins_per_s"] for r in runs), 3),
                      "portal_cpu_ms_per_login_mean": round(statistics.mean(r["portal_cpu_ms_per_login"] for r in runs), 1),
                      "ratio_to_bare_hash_rate": round(statistics.mean(r["full_logins_per_s"] for r in runs) / bare_rate, 3)}
               for name, runs in logins.items()}
    first, second = names
    return {
        "method": "alternated rounds in one run; logins offered above what the portal serves",
        "logs": str(workdir / "logs"),
        "rounds": rounds, "window_seconds": seconds, "offered_logins_per_s": {name: round(rate, 2) for name, rate in offered_rates.items()},
        "argon2id_both_cores": {name: {"runs": [round(v, 2) for v in values], "mean": round(statistics.mean(values), 3),
                                       "argon2_build": sorted(builds[name])}
                                for name, values in {"bare": bare, **hashes}.items()},
        "hash_rate_gain": round(statistics.mean(hashes[first]) / statistics.mean(hashes[second]), 3),
        "logins": logins,
        "summary": summary,
        "login_rate_gain": round(summary[first]["full_logins_per_s_mean"] / summary[second]["full_logins_per_s_mean"], 3),
    }
