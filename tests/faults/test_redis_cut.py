"""(e) Redis (the rate limits' shared storage) cut in the middle of the load, then back.

The suite's own redis-server is stopped: nobody else's Redis is touched. What the
rate limiter does is measured with a burst of code submissions from one address (the
per-address limit of POST /login/code is 20 a minute, idp/login.py), each on a new
connection:

- Redis up: the workers share the count; the 21st gets 429.
- Redis away: Flask-Limiter falls back to memory in each process
  (RATELIMIT_IN_MEMORY_FALLBACK_ENABLED, RATELIMIT_SWALLOW_ERRORS in portal/app.py): the
  limits still apply, per process, so an address gets at most workers × limit tries;
  nobody sees an error page.
- Redis back: each process probes it now and then (1, 2, 4 … 32 s apart) and counts in
  Redis again; the counts of the outage are forgotten (a restarted Redis is empty).
"""
from __future__ import annotations

import time

import pytest

from tests.faults.support import Load, Outcome, Person, assert_none, csrf, iter_until, run_scenario

WORKERS = 2
CODE_LIMIT = 20  # idp/login.py: POST /login/code, "20 per minute" per address
OUTAGE_SECONDS = 6.0


class Burst(Person):
    """Someone sending codes from one address as fast as the portal answers, each on a
    new connection (so that both workers serve them, as for a real client)."""

    def __init__(self, load: Load, name: str) -> None:
        super().__init__(load)
        self.name = name

    def attempts(self, address: str, count: int) -> list[int | None]:
        self.http.headers["X-Forwarded-For"] = address
        page = self.call("burst_form", "GET", "/login")
        token = csrf(page.text)
        statuses = []
        for _ in range(count):
            # No login under way: the portal answers with a redirect to /login, cheaply.
            response = self.call("burst_code", "POST", "/login/code", data={"csrf_token": token, "code": "000000"},
                                 headers={"Connection": "close"})
            statuses.append(response.status_code if response is not None else None)
        return statuses


def first_refusal(statuses: list[int | None]) -> int | None:
    """The attempt (counted from 1) that first got 429."""
    return next((n for n, status in enumerate(statuses, start=1) if status == 429), None)


@pytest.fixture(scope="module")
def outcome(production_stack) -> Outcome:
    with production_stack("redis-cut") as stack:
        load = Load(stack, professionals=4, registrants=1)

        def fault(load: Load, notes: dict) -> None:
            notes["burst_with_redis"] = Burst(load, "burst-redis-up").attempts("192.0.2.10", CODE_LIMIT + 4)
            stack.redis.stop()
            cut = time.monotonic()
            notes["cut_at"] = round(load.now(), 2)
            notes["burst_without_redis"] = Burst(load, "burst-redis-down").attempts(
                "192.0.2.20", WORKERS * CODE_LIMIT + 6)
            notes["readyz_while_cut"] = stack.readyz()
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut)))
            stack.redis.start()
            notes["redis_back_at"] = round(load.now(), 2)
            back = time.monotonic()
            for _ in iter_until(45, 0.5):
                if stack.redis.keys():
                    notes["limits_back_in_redis_after_s"] = round(time.monotonic() - back, 1)
                    break

        yield run_scenario(stack, load, fault, warmup=3, after=2, settle=30)


def test_no_error_page_and_no_traceback(outcome):
    assert_none(outcome.page_problems(), "pages people should not see", outcome)
    errors = {s: n for s, n in outcome.statuses().items() if s is None or not isinstance(s, int) or s >= 500}
    assert not errors, f"errors while Redis was away: {errors}; {outcome.describe()}"
    assert_none(outcome.driver_errors(), "the load driver failed", outcome)


def test_readyz_says_redis_is_away(outcome):
    status, body = outcome.notes["readyz_while_cut"]
    # Degraded, still serving: only the database takes a process out of rotation.
    assert status == 200 and body["status"] == "degraded", body
    assert not next(c for c in body["checks"] if c["name"] == "redis")["ok"], body


def test_with_redis_the_workers_share_the_count(outcome):
    statuses = outcome.notes["burst_with_redis"]
    assert first_refusal(statuses) == CODE_LIMIT + 1, statuses


def test_without_redis_the_limits_still_apply_in_each_process(outcome):
    """Fails open to memory, not to "no limit": at most workers × limit tries per address."""
    statuses = outcome.notes["burst_without_redis"]
    assert set(statuses) <= {303, 429}, statuses
    refused = first_refusal(statuses)
    assert refused is not None, f"no 429 in {len(statuses)} attempts without Redis: {statuses}"
    passed = statuses.count(303)
    assert CODE_LIMIT <= passed <= WORKERS * CODE_LIMIT, statuses


def test_limits_go_back_to_redis_by_themselves(outcome):
    assert "limits_back_in_redis_after_s" in outcome.notes, \
        f"no rate-limit key in Redis 45 s after it came back: {outcome.describe()}"


def test_nothing_acknowledged_is_lost_and_no_email_twice(outcome):
    assert_none(outcome.lost(), "acknowledged work lost or duplicated", outcome)
    assert_none(outcome.email_problems(), "emails not delivered exactly once", outcome)
    assert_none(outcome.store_problems(), "store and database disagree", outcome)
