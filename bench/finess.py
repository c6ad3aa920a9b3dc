"""FINESS referential: importing a national-size extraction, then the autocomplete.

For each database (SQLite, and PostgreSQL in a throwaway schema when one is reachable):
1. import a 100,000-establishment extraction into an empty database, in a subprocess
   whose peak resident memory (ru_maxrss) is the import's, interpreter included;
2. import it again (nothing changed), then a newer one (1% renamed, 1% gone);
3. send 600 searches of ten kinds through the Flask test client, each one three times
   to every database in turn (side by side: a noisy machine slows both alike), keeping
   the wall time and this process's CPU time of every request, each query's fastest
   answer, and the load average around them.

Settings: ENRS_BENCH_DATABASE_URL (else ENRS_TEST_DATABASE_URL, else the local
postgresql+psycopg://postgres@127.0.0.1:5432/test when it answers) for PostgreSQL,
ENRS_BENCH_POSTGRES=0 to leave it out, ENRS_BENCH_FINESS_COUNT for another size.
"""
from __future__ import annotations

import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from bench.finess_factory import establishments, write_extraction

SEED = 2026
DEFAULT_COUNT = 100_000
QUERIES_PER_KIND = 60
WARM_UP = 40
LOCAL_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
COMMON_QUERIES = (
    "centre hospitalier", "pharmacie", "ehpad", "ch", "saint", "les", "clinique de la",
    "centre hosp", "ph", "maison de sante", "laboratoire", "foyer", "ehpad les", "ch saint",
)


# -- environment ------------------------------------------------------------------------


def app_env(workdir: Path, database_url: str) -> dict[str, str]:
    return {
        "ENRS_ENV": "development",
        "ENRS_INSTANCE_DIR": str(workdir / "instance"),
        "ENRS_SECRET_KEY": "bench-secret-key-" + "x" * 32,
        "ENRS_DATABASE_URL": database_url,
        "ENRS_MAIL_URL": f"file://{workdir / 'mail'}",
    }


def postgres_url() -> str | None:
    if os.environ.get("ENRS_BENCH_POSTGRES") == "0":
        return None
    url = os.environ.get("ENRS_BENCH_DATABASE_URL") or os.environ.get("ENRS_TEST_DATABASE_URL")
    if url:
        return url
    import sqlalchemy as sa

    engine = sa.create_engine(LOCAL_POSTGRES, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return LOCAL_POSTGRES
    except Exception:
        return None
    finally:
        engine.dispose()


@contextmanager
def throwaway_schema(url: str) -> Iterator[str]:
    import sqlalchemy as sa

    schema = f"enrs_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url)
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


# -- the import, in a process of its own -------------------------------------------------


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _reset_peak_rss() -> None:
    """Start the peak over from the current size (Linux >= 4.0), so that the peak is the
    import's, not that of the app's start-up."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM rather than ru_maxrss: Linux carries
    ru_maxrss over from the parent across fork and exec, which would report the bench's
    own size instead of the import's."""
    peak = _proc_status_mb("VmHWM")
    return peak if peak is not None else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def import_child(database_url: str, path: str, workdir: str) -> None:
    """(Subprocess) import one file and print JSON: wall time and peak memory."""
    from portal.app import create_app
    from portal.db import db

    app = create_app(app_env(Path(workdir), database_url))
    with app.app_context():
        from onboarding.finess import import_finess

        resident = _proc_status_mb("VmRSS")
        _reset_peak_rss()
        started = time.perf_counter()
        report = import_finess(db.session, path)
        seconds = time.perf_counter() - started
    print(json.dumps({
        "seconds": round(seconds, 2),
        "rows_per_second": round(report.lines / seconds),
        "peak_rss_mb": peak_rss_mb(),
        # The app alone (portal and its libraries, loaded and idle) before the import.
        "rss_before_import_mb": resident,
        "created": report.created, "updated": report.updated, "closed": report.closed,
        "unchanged": report.unchanged, "rejected": report.rejected,
    }))


def timed_import(database_url: str, path: Path, workdir: Path) -> dict:
    command = [sys.executable, "-m", "bench.finess", "import-child", database_url, str(path), str(workdir)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"import failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def migrate(workdir: Path, database_url: str) -> None:
    from portal.app import create_app
    from portal.db import db, upgrade

    app = create_app(app_env(workdir, database_url))
    with app.app_context():
        upgrade(db.engine)
        db.engine.dispose()


# -- the files --------------------------------------------------------------------------


def newer_rows(count: int) -> Iterator[dict[str, str]]:
    """The same extraction a month later: 1% renamed, 1% gone."""
    for index, row in enumerate(establishments(count, seed=SEED)):
        if index % 100 == 7:
            continue
        if index % 100 == 13:
            row = {**row, "rs": row["rs"][:30] + " NOUVEAU", "datemaj": "2026-06-01"}
        yield row


# -- the searches -----------------------------------------------------------------------


def search_queries(count: int) -> list[tuple[str, str]]:
    """(kind, query) pairs drawn from the extraction's own establishments."""
    rng = random.Random(SEED)
    step = max(1, count // (QUERIES_PER_KIND * 2))
    sample = [row for index, row in enumerate(establishments(count, seed=SEED)) if index % step == 0]
    rng.shuffle(sample)
    sample = sample[:QUERIES_PER_KIND]
    queries: list[tuple[str, str]] = []
    for row in sample:
        words = row["rs"].replace('"', "").split()
        city = row["ligneacheminement"].split(" ", 1)[1].replace(" CEDEX", "")
        long_words = row["rslongue"].split()
        queries += [
            ("name", " ".join(words[:3]).lower()),
            ("name_words_shuffled_accented", " ".join(reversed(long_words[-2:])).lower()),
            ("name_being_typed", f"{words[0].lower()} {words[-1][:3].lower()}"),
            ("city", city.title()),
            ("kind_and_city", f"{words[0]} {city}".lower()),
            ("postal_code", row["ligneacheminement"][:5]),
            ("finess", row["nofinesset"]),
            ("finess_prefix", row["nofinesset"][:5]),
            ("common_words", rng.choice(COMMON_QUERIES)),
            ("no_match", f"{words[0].lower()} xylophone"),
        ]
    rng.shuffle(queries)
    return queries


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return round(ordered[index], 2)


def latency_summary(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50_ms": percentile(values, 0.50),
        "p95_ms": percentile(values, 0.95),
        "p99_ms": percentile(values, 0.99),
        "max_ms": round(max(values), 2),
        "mean_ms": round(statistics.fmean(values), 2),
    }


REPEATS = 3


class SearchClient:
    """The autocomplete of one database, called through the Flask test client."""

    def __init__(self, workdir: Path, database_url: str) -> None:
        from portal.app import create_app

        self.app = create_app(app_env(workdir, database_url))
        self.client = self.app.test_client()
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}
        self.best: dict[str, list[float]] = {}
        self.empty = 0
        self.requests = 0

    def ask(self, query: str) -> tuple[float, float, bool]:
        """(wall ms, CPU ms of this process, whether anything was found)."""
        # One address per request: the per-address rate limit stays in the path, unreached.
        self.requests += 1
        index = self.requests
        address = f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"
        wall, cpu = time.perf_counter(), time.process_time()
        response = self.client.get("/api/establishments", query_string={"q": query, "limit": "10"},
                                   environ_base={"REMOTE_ADDR": address})
        wall, cpu = (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"{query!r}: HTTP {response.status_code}")
        return wall, cpu, bool(response.get_json())

    def record(self, kind: str, samples: list[tuple[float, float, bool]]) -> None:
        self.wall.setdefault(kind, []).extend(wall for wall, _, _ in samples)
        self.cpu.setdefault(kind, []).extend(cpu for _, cpu, _ in samples)
        self.best.setdefault(kind, []).append(min(wall for wall, _, _ in samples))
        if not samples[0][2] and kind != "no_match":
            self.empty += 1

    def summary(self) -> dict:
        self.app.extensions["enrs.db"]["engine"].dispose()
        flat = lambda by_kind: [v for values in by_kind.values() for v in values]  # noqa: E731
        return {
            "wall": latency_summary(flat(self.wall)),
            "cpu": latency_summary(flat(self.cpu)),
            f"best_of_{REPEATS}": latency_summary(flat(self.best)),
            "wall_by_kind": {kind: latency_summary(values) for kind, values in sorted(self.wall.items())},
            "queries_without_results": self.empty,
        }


def measure_searches(clients: dict[str, SearchClient], queries: list[tuple[str, str]]) -> dict:
    """Each query REPEATS times to each database in turn. `wall` and `cpu` count every
    request; `best_of_3` keeps each query's fastest answer, which filters out the time a
    busy machine keeps the process waiting for a CPU."""
    load_before = os.getloadavg()
    for _, query in queries[:WARM_UP]:
        for client in clients.values():
            client.ask(query)
    for kind, query in queries:
        samples: dict[str, list] = {name: [] for name in clients}
        for _ in range(REPEATS):
            for name, client in clients.items():
                samples[name].append(client.ask(query))
        for name, client in clients.items():
            client.record(kind, samples[name])
    load_after = os.getloadavg()
    result: dict = {name: client.summary() for name, client in clients.items()}
    result["load_average_1min"] = {"before": round(load_before[0], 2), "after": round(load_after[0], 2)}
    if "sqlite" in clients and "postgresql" in clients:
        result["postgresql_to_sqlite_p50"] = round(
            result["postgresql"]["wall"]["p50_ms"] / result["sqlite"]["wall"]["p50_ms"], 2)
    return result


# -- the benchmark ----------------------------------------------------------------------


def bench_imports(name: str, database_url: str, workdir: Path, files: dict[str, Path]) -> dict:
    print(f"   {name} : migration, import initial…", flush=True)
    migrate(workdir, database_url)
    load_before = os.getloadavg()[0]
    first = timed_import(database_url, files["initial"], workdir)
    print(f"   {name} : import {first['seconds']} s, pic mémoire {first['peak_rss_mb']} Mo ; réimports…", flush=True)
    again = timed_import(database_url, files["initial"], workdir)
    newer = timed_import(database_url, files["newer"], workdir)
    return {"import_empty_database": first, "reimport_same_file": again, "import_newer_file": newer,
            "load_average_1min_before": round(load_before, 2)}


def run() -> dict:
    count = int(os.environ.get("ENRS_BENCH_FINESS_COUNT", DEFAULT_COUNT))
    workdir = Path(tempfile.mkdtemp(prefix="enrs-bench-finess-"))
    try:
        with ExitStack() as stack:
            files = {"initial": workdir / "finess.csv", "newer": workdir / "finess-newer.csv"}
            started = time.perf_counter()
            write_extraction(files["initial"], establishments(count, seed=SEED))
            write_extraction(files["newer"], newer_rows(count))
            print(f"   {count} établissements générés en {time.perf_counter() - started:.1f} s", flush=True)
            databases = {"sqlite": f"sqlite:///{workdir / 'sqlite' / 'bench.db'}"}
            url = postgres_url()
            if url is not None:
                databases["postgresql"] = stack.enter_context(throwaway_schema(url))
            result: dict = {
                "establishments": count,
                "file_mb": round(files["initial"].stat().st_size / 1e6, 1),
                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                "imports": {name: bench_imports(name, db_url, workdir / name, files)
                            for name, db_url in databases.items()},
            }
            if url is None:
                result["imports"]["postgresql"] = "left out: no PostgreSQL reachable (set ENRS_BENCH_DATABASE_URL)"
            queries = search_queries(count)
            print(f"   {len(queries)} recherches sur {', '.join(databases)}…", flush=True)
            clients = {name: SearchClient(workdir / name, db_url) for name, db_url in databases.items()}
            result["searches"] = measure_searches(clients, queries)
            for name in databases:
                wall, best = result["searches"][name]["wall"], result["searches"][name][f"best_of_{REPEATS}"]
                print(f"   {name} : p50 {wall['p50_ms']} ms, p95 {wall['p95_ms']} ms "
                      f"(meilleur de {REPEATS} : p95 {best['p95_ms']} ms)", flush=True)
            return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "import-child":
        import_child(*sys.argv[2:])
    else:
        print(json.dumps(run(), indent=2))
