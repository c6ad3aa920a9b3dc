"""The figures of a load-test run as Markdown tables (for docs/deploy-sizing.md or the issue):

    python -m bench.load.report [bench/results/load.json]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.load.journey import HTTP_STEPS

DEFAULT = Path(__file__).resolve().parents[1] / "results" / "load.json"
ROUTES = {"login_page": "GET login.login", "login_password": "POST login.login", "code_page": "GET login.code",
          "login_code": "POST login.code", "apps": "GET dashboard.apps", "app_open": "GET dashboard.open",
          "authorize": "GET oidc.authorize", "token": "POST oidc.token", "userinfo": "GET oidc.userinfo",
          "logout": "POST login.logout"}


def _ms(summary: dict, key: str = "p95_ms") -> str:
    value = summary.get(key) if summary else None
    return "–" if value is None else f"{value:.0f}"


def _names(builds: str | list[str]) -> str:
    return builds if isinstance(builds, str) else ", ".join(builds)


def render(result: dict) -> str:
    hashes = result["argon2id_verifications_per_second"]
    lines = [
        f"Argon2id verifications/s (libargon2: {_names(hashes.get('argon2_build_bare', 'wheel'))}): "
        f"{hashes['one_process']:.2f} in one process, {hashes['both_cores_before']:.2f} "
        f"(before) and {hashes['both_cores_after']:.2f} (after) in one process per core together, "
        f"mean {hashes['both_cores']:.2f}; {hashes['cpu_seconds_per_hash'] * 1000:.0f} ms of CPU per verification.",
        *([f"As the portal's workers hash (huge pages for the hash's memory: "
           f"{'yes' if hashes['portal_workers_use_huge_pages'] else 'NO'}; the lanes in the calling thread; "
           f"libargon2 {_names(hashes.get('argon2_build_as_workers', 'wheel'))}, the workers' "
           f"{_names(hashes.get('portal_workers_argon2_build', 'wheel'))}): "
           f"{hashes['both_cores_as_workers_before']:.2f} (before) and {hashes['both_cores_as_workers_after']:.2f} "
           f"(after), mean {hashes['both_cores_as_workers']:.2f}; CPU per verification with two processes "
           f"{hashes['cpu_seconds_per_hash_two_processes'] * 1000:.0f} ms bare, "
           f"{hashes['cpu_seconds_per_hash_two_processes_as_workers'] * 1000:.0f} ms as the workers hash."]
          if "both_cores_as_workers" in hashes else []),
        *([f"Best sustained full logins/s: {ratio['best_full_logins_per_s']:.2f} = {ratio['to_bare_hash_rate']:.3f} "
           f"× the bare hash rate"
           + (f", {ratio['to_hash_rate_as_workers']:.3f} × the rate as the workers hash." if "to_hash_rate_as_workers"
              in ratio else ".")]
          if (ratio := result.get("logins_ratio")) and ratio.get("best_full_logins_per_s") else []),
        f"Other work on the machine before the load: {result['machine'].get('busy_cores_before_load')} cores.",
        "",
        "| window | offered /s | full logins /s | SSO hand-offs /s | p95 password ms | p95 all requests ms "
        "| p99 all requests ms | errors | others' CPU (cores) | portal CPU (cores) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for window in result["windows"]:
        cpu = window["cpu_cores"]
        lines.append(
            f"| {window['name']} | {window['offered_journeys_per_s']:.2f} | {window['full_logins_per_s']:.2f} | "
            f"{window['sso_handoffs_per_s']:.2f} | {_ms(window['steps']['login_password'])} | "
            f"{_ms(window['all_requests'])} | {_ms(window['all_requests'], 'p99_ms')} | "
            f"{sum(window['errors'].values())} | {cpu.get('others', '–')} | {cpu.get('portal', '–')} |")
    fixed = next(w for w in result["windows"] if w["name"].startswith("fixed"))
    lines += ["", "CPU per completed journey (ms): the web processes, split into Argon2's lane threads (none "
              "with ENRS_ARGON2_THREADS=1, the default: the hash is then the request's thread's) and the "
              "portal's own threads (requests, mail, gunicorn); `enrs worker`, PostgreSQL, the driver:", "",
              "| window | web | hash lanes | portal threads | worker | PostgreSQL | driver |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for window in result["windows"]:
        per = window.get("cpu_seconds_per_journey") or {}
        if per:
            lines.append(f"| {window['name']} | " + " | ".join(
                "–" if per.get(key) is None else f"{per[key] * 1000:.0f}"
                for key in ("portal", "portal_hash_lanes", "portal_threads", "worker", "postgres", "driver")) + " |")
    lines += ["", f"Fixed phase ({fixed['offered_journeys_per_s']:.2f} journeys/s), per step (ms):", "",
              "| step | p50 | p95 | p99 | max |", "| --- | ---: | ---: | ---: | ---: |"]
    for step in (*HTTP_STEPS, "mail"):
        summary = fixed["steps"][step]
        lines.append(f"| {step} | {_ms(summary, 'p50_ms')} | {_ms(summary)} | {_ms(summary, 'p99_ms')} | "
                     f"{_ms(summary, 'max_ms')} |")
    lines += ["", "Seen by the driver / by the portal itself (its access log: from the request reaching Flask to "
              "the response), p50 and p95 in ms; the difference is time spent before Flask (the connection "
              "waiting in a busy gunicorn worker, the accept queue) plus the driver's own delays:", "",
              "| window | driver loop lag p95 | " + " | ".join(ROUTES) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in ROUTES) + " |"]
    for window in result["windows"]:
        server = result["server_side"].get(window["name"], {})
        cells = []
        for step, route in ROUTES.items():
            client, mine = window["steps"][step], server.get(route, {})
            cells.append("–" if not client.get("n") or not mine.get("n") else
                         f"{client['p50_ms']:.0f}/{client['p95_ms']:.0f} vs {mine['p50_ms']:.0f}/{mine['p95_ms']:.0f}")
        lag = window.get("driver_loop_lag", {})
        lines.append(f"| {window['name']} | {_ms(lag)} | " + " | ".join(cells) + " |")
    calibration = result["one_journey_at_a_time"]
    lines += ["", f"One journey at a time ({calibration['journeys']} journeys): CPU per step (ms) and latency:", "",
              "| step | web CPU | PostgreSQL CPU | latency p50 |", "| --- | ---: | ---: | ---: |"]
    for step, cost in calibration["per_step"].items():
        latency = "–" if cost["latency_p50_ms"] is None else f"{cost['latency_p50_ms']:.0f}"
        lines.append(f"| {step} | {cost['web_cpu_ms']:.1f} | {cost['postgres_cpu_ms']:.1f} | {latency} |")
    lines.append(f"| **journey** | **{calibration['per_journey_web_cpu_ms']:.0f}** | "
                 f"**{calibration['per_journey_postgres_cpu_ms']:.0f}** | |")
    memory = result["memory_mib_per_worker"]
    lines += ["", f"Memory per worker (MiB): idle {memory['idle_after_warm_up']}, highest sampled under load "
              f"{memory['max_sampled_under_load']}, peak (VmHWM) {memory['peak_vmhwm_at_end']}, at the end "
              f"{memory['at_end']}; proportional (PSS) highest sampled under load "
              f"{memory.get('pss_max_sampled_under_load', '–')}.", "", "Targets: " + ", ".join(
                  f"{name} {'yes' if met else 'NO'}" for name, met in result["targets"].items()),
              "Other readings: " + ", ".join(f"{name} {'yes' if met else 'NO'}"
                                             for name, met in result.get("targets_other_readings", {}).items())]
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    print(render(json.loads(path.read_text())))
