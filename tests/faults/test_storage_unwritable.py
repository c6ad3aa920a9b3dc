"""(d) The attestation store made unwritable for a while (`chmod 0500` on its folder and
its month folders), then writable again, in the middle of the load.

The portal's processes run without root's override of file modes (see support.py), as
a service user would. While the store refuses writes, an upload must be refused with
a clear French message, nothing half-written may stay behind and no row may point to a
missing file; afterwards uploads work again by themselves.
"""
from __future__ import annotations

import os
import stat
import time

import pytest

from tests.faults.support import Load, Outcome, assert_none, run_scenario

UNWRITABLE_SECONDS = 6.0
READ_ONLY = stat.S_IRUSR | stat.S_IXUSR  # 0500


@pytest.fixture(scope="module")
def outcome(production_stack) -> Outcome:
    with production_stack("storage-unwritable") as stack:
        load = Load(stack, professionals=4, registrants=1)

        def fault(load: Load, notes: dict) -> None:
            folders = [stack.store_root, *(p for p in stack.store_root.rglob("*") if p.is_dir())]
            modes = {folder: stat.S_IMODE(folder.stat().st_mode) for folder in folders}
            notes["folders"] = [str(f.relative_to(stack.store_root)) for f in folders]
            try:
                for folder in folders:
                    os.chmod(folder, READ_ONLY)
                time.sleep(0.5)
                notes["readyz_while_unwritable"] = stack.readyz()
                time.sleep(UNWRITABLE_SECONDS - 0.5)
            finally:
                for folder, mode in modes.items():
                    os.chmod(folder, mode)

        yield run_scenario(stack, load, fault, warmup=3, after=5, settle=30)


def refused_uploads(outcome: Outcome) -> list:
    notes = outcome.notes
    return [h for h in outcome.load.hits if h.step == "access_request" and h.status is not None
            and h.status >= 400 and notes["fault_start"] <= h.at <= notes["fault_end"]]


def test_the_store_really_refused_writes(outcome):
    status, body = outcome.notes["readyz_while_unwritable"]
    # Degraded, still serving: only the database takes a process out of rotation.
    assert status == 200 and body["status"] == "degraded", body
    assert not next(c for c in body["checks"] if c["name"] == "storage")["ok"], body
    assert refused_uploads(outcome), f"no upload met the unwritable store: {outcome.describe()}"


def test_no_traceback_and_only_the_french_error_page(outcome):
    assert_none(outcome.page_problems(), "pages people should not see", outcome)
    assert_none(outcome.driver_errors(), "the load driver failed", outcome)


def test_uploads_refused_with_a_clear_french_message_about_the_file(outcome):
    refused = refused_uploads(outcome)
    assert refused
    unclear = [(round(h.at, 1), h.status, h.excerpt[:120]) for h in refused
               # The form again with an error next to the file (its text: tests/test_access.py).
               if h.status >= 500 or not (h.excerpt.startswith("Erreur – ROR inscription")
                                          or any(word in h.excerpt for word in ("dépôt", "fichier", "attestation")))]
    assert not unclear, f"uploads refused without a clear message: {unclear}"


def test_nothing_half_written_and_no_row_without_its_file(outcome):
    assert_none(outcome.store_problems(), "store and database disagree", outcome)


def test_uploads_work_again_once_the_store_is_writable(outcome):
    after = [a for a in outcome.load.acks.uploads if a["sent_at"] > outcome.notes["fault_end"]]
    assert after, f"no upload acknowledged after the store came back: {outcome.describe()}"


def test_nothing_acknowledged_is_lost_and_no_email_twice(outcome):
    assert_none(outcome.lost(), "acknowledged work lost or duplicated", outcome)
    assert_none(outcome.email_problems(), "emails not delivered exactly once", outcome)
