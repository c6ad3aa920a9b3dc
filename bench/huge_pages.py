"""Huge pages for the hash's memory, side by side: `python -m bench huge_pages`.

`enrs serve --prod` runs its workers with glibc's `glibc.malloc.hugetlb=1` tunable
(portal/huge_pages.py). This benchmark measures what that is worth, in one run so that
the machine's drift (its speed moves by a quarter within minutes here) cancels out:

- the Argon2id rate of the machine (one process per core, together), bare and with the
  tunable, alternated over several rounds;
- the logins the portal serves with the machine full, its 4 workers with huge pages and
  without (`GLIBC_TUNABLES=glibc.malloc.hugetlb=0`, which `enrs serve --prod` respects),
  in rounds ordered ABBA, each window offering more logins than the portal can serve
  (the login alone, to the dashboard, as the load test's last phase), with the CPU each
  login costs.

Knobs: BENCH_HUGE_PAGES_ROUNDS (2, each with both variants, in alternate order), BENCH_HUGE_PAGES_SECONDS (30),
BENCH_HUGE_PAGES_OFFERED (0.85: the rate offered, as a fraction of the bare hash rate);
the database and Redis as for the load test (bench/load).
"""
from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.load import setup
from bench.load.argon2_rate import machine_rate
from bench.load.driver import Driver, Window
from bench.load.journey import Inbox, RelyingParty
from bench.load.processes import Served
from bench.load.runner import DATABASE, PgBackends, Settings, _free_port, _say

VARIANTS = {"huge pages": {}, "without": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}}


def _int(name: str, default: str) -> int:
    return int(os.environ.get(f"BENCH_HUGE_PAGES_{name}") or default)


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
    return {"full_logins_per_s": report["full_logins_per_s"], "errors": sum(report["errors"].values()),
            "portal_cpu_ms_per_login": round(report["cpu_seconds_per_journey"].get("portal", 0) * 1000, 1),
            "portal_cores": report["cpu_cores"].get("portal"),
            "rss_max_mib_per_worker": report["rss_max_mib_per_worker"]}


def run() -> dict:
    settings = Settings()
    rounds = max(1, _int("ROUNDS", "2"))
    cores = os.cpu_count() or 2
    seconds = float(os.environ.get("BENCH_HUGE_PAGES_SECONDS") or 30)
    offered = float(os.environ.get("BENCH_HUGE_PAGES_OFFERED") or 0.85)
    workdir = Path(tempfile.mkdtemp(prefix="enrs-huge-pages-"))
    port, smtp_port, rp_port = _free_port(), _free_port(), _free_port()
    setup.flush_redis(settings.redis_url)
    database_url = setup.create_database(settings.server_url, DATABASE)
    env = {
        "ENRS_ENV": "development", "ENRS_INSTANCE_DIR": str(workdir / "instance"),
        "ENRS_SECRET_KEY": setup.SECRET_KEY, "ENRS_BASE_URL": f"http://127.0.0.1:{port}",
        "ENRS_DATABASE_URL": database_url, "ENRS_REDIS_URL": settings.redis_url,
        "ENRS_MAIL_URL": f"smtp://127.0.0.1:{smtp_port}", "ENRS_LOG_FORMAT": "json",
    }
    hashes: dict[str, list[float]] = {"bare": [], "huge pages": []}
    logins: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    saved = os.environ.get("GLIBC_TUNABLES")
    try:
        ror = setup.seed(env, f"http://127.0.0.1:{rp_port}")
        accounts = setup.create_accounts(env, settings.accounts)
        for _ in range(rounds):
            for huge in (False, True):
                hashes["huge pages" if huge else "bare"].append(machine_rate(cores, huge_pages=huge)["total"])
        bare_rate = statistics.mean(hashes["bare"])
        _say(f"Argon2id on both cores: bare {bare_rate:.2f}/s, with huge pages "
             f"{statistics.mean(hashes['huge pages']):.2f}/s")
        order = [name for index in range(rounds) for name in (list(VARIANTS) if index % 2 == 0
                                                               else list(reversed(VARIANTS)))]
        for name in order:
            # The server inherits this process's environment (setup.process_env).
            os.environ.pop("GLIBC_TUNABLES", None)
            os.environ.update(VARIANTS[name])
            served = Served(env, port, settings.workers, settings.threads, workdir / "logs" / name.replace(" ", "-"))
            try:
                served.start()
                served.warm_up()
                uses = served.huge_pages()
                result = asyncio.run(_saturated_logins(served, accounts, ror, smtp_port, offered * bare_rate,
                                                       seconds))
            finally:
                served.stop()
            logins[name].append({**result, "workers_use_huge_pages": uses})
            _say(f"{name}: {result['full_logins_per_s']:.2f} logins/s, {result['portal_cpu_ms_per_login']:.0f} ms "
                 f"of web CPU each, errors {result['errors']} (huge pages in the workers: {uses})")
            time.sleep(3)
        for _ in range(rounds):
            for huge in (True, False):
                hashes["huge pages" if huge else "bare"].append(machine_rate(cores, huge_pages=huge)["total"])
    finally:
        if saved is None:
            os.environ.pop("GLIBC_TUNABLES", None)
        else:
            os.environ["GLIBC_TUNABLES"] = saved
        setup.drop_database(settings.server_url, DATABASE)
        setup.flush_redis(settings.redis_url)
    bare_rate = statistics.mean(hashes["bare"])
    summary = {name: {"full_logins_per_s_mean": round(statistics.mean(r["full_logins_per_s"] for r in runs), 3),
                      "portal_cpu_ms_per_login_mean": round(statistics.mean(r["portal_cpu_ms_per_login"] for r in runs), 1),
                      "ratio_to_bare_hash_rate": round(statistics.mean(r["full_logins_per_s"] for r in runs) / bare_rate, 3)}
               for name, runs in logins.items()}
    return {
        "method": "alternated rounds in one run; logins offered above what the portal serves",
        "logs": str(workdir / "logs"),
        "rounds": rounds, "window_seconds": seconds, "offered_logins_per_s": round(offered * bare_rate, 2),
        "argon2id_both_cores": {name: {"runs": [round(v, 2) for v in values], "mean": round(statistics.mean(values), 3)}
                                for name, values in hashes.items()},
        "hash_rate_gain": round(statistics.mean(hashes["huge pages"]) / bare_rate, 3),
        "logins": logins,
        "summary": summary,
        "login_rate_gain": round(summary["huge pages"]["full_logins_per_s_mean"]
                                 / summary["without"]["full_logins_per_s_mean"], 3),
    }
