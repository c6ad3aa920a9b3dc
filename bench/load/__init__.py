"""Load test of the whole login + SSO journey: `python -m bench load` (or `make bench`).

The portal runs as in production: `enrs serve --prod --workers 4 --threads 8` (gunicorn,
gthread, huge pages for the hash's memory) and `enrs worker` beside it, on a PostgreSQL database of its own (created, then
dropped), Redis for the shared rate limits, and an SMTP server on loopback that receives
the login codes. An asyncio driver (aiohttp on uvloop) offers journeys at a rising arrival rate
(open model, Poisson arrivals), each virtual user doing: GET /login, POST identifier +
password, the code read from the mail, GET + POST /login/code, GET /apps, GET
/apps/ror-demo/open, then the demo ROR application's authorization request (PKCE) → code,
POST /oauth/token (client_secret_basic), GET /oauth/userinfo, and POST /logout (which
sends the application a back-channel logout token).

Phases: (0) a few journeys one at a time: latency without queueing and the CPU each step
costs; (1) the whole journey at a rising rate, stage after stage, until the portal stops
keeping up (an error, journeys in flight piling up, or the password step's p95 beyond
3 s), then one stage halfway between the last rate it kept up with and the first it did
not — of the stages it kept up with, the one that served the most logins gives the
sustained rate, and the highest stage whose password step kept p95 under 500 ms is
reported too; (2) the whole journey at 70 % of
the sustained rate; (3) the login alone (to the dashboard) at a rising rate, from one step above the whole
journey's sustained rate. The Argon2id
hash rate of the machine (one process per core, together) is measured in the same run,
before and after.

Method and figures: docs/deploy-sizing.md. Knobs (environment): BENCH_LOAD_DATABASE_URL
(a PostgreSQL cluster, any database of it; default ENRS_BENCH_DATABASE_URL or the local
`test` database), BENCH_LOAD_REDIS_URL (default redis://127.0.0.1:6379/14, flushed),
BENCH_LOAD_ACCOUNTS (150), BENCH_LOAD_STAGE_SECONDS (20, longer at low rates to get
BENCH_LOAD_STAGE_ARRIVALS, 25), BENCH_LOAD_MAX_STAGES (16), BENCH_LOAD_LOGIN_ONLY_STAGES (6),
BENCH_LOAD_START and BENCH_LOAD_STEP (first rate and step, as fractions of the hash rate
measured as the workers hash, which a login never reaches: 0.15 and 0.06), BENCH_LOAD_FIXED_SECONDS (60), BENCH_LOAD_P95_LIMIT_MS (500),
BENCH_LOAD_P95_CEILING_MS (3000), BENCH_LOAD_WORKERS (4), BENCH_LOAD_THREADS (8),
BENCH_LOAD_CALIBRATION (10 journeys one at a time), BENCH_LOAD_REFINE (1 stage halfway between
the last rate a ramp kept up with and the first it did not), BENCH_LOAD_PYSPY (1: profile the workers
with py-spy during the fixed phase; BENCH_LOAD_PYSPY_RATE samples/s, 50).
"""
from __future__ import annotations


def run() -> dict:
    from bench.load.runner import run_load

    return run_load()
