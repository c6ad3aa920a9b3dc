"""The suite's own rule for emails received twice, checked on recorded outcomes: only
the message a killed process had handed to the SMTP server but not recorded as sent is
excused, and only one of them."""
from __future__ import annotations

from tests.faults.support import Outcome

KILLED_AT = 1_000.0


def outcome_with(received: list[tuple[str, float]], outbox: list[tuple], notes: dict) -> Outcome:
    """An Outcome as recorded after recovery, without a stack to read it from."""
    outcome = Outcome.__new__(Outcome)
    outcome.notes = dict(notes)
    outcome.outbox = outbox
    outcome.received = [("pro@esante-faults.fr", "Code", message_id) for message_id, _ in received]
    outcome.accepted_at = {}
    for message_id, at in received:
        outcome.accepted_at.setdefault(message_id, []).append(at)
    return outcome


def row(row_id: int, message_id: str, attempts: int) -> tuple:
    return (row_id, "pro@esante-faults.fr", "Code", message_id, "sent", attempts, 0.1)


KILL_NOTES = {"killed_at_wall": KILLED_AT, "claims_expired_ids": [42]}


def test_the_message_in_the_killed_process_hands_may_arrive_twice():
    outcome = outcome_with([("<a>", KILLED_AT - 0.003), ("<a>", KILLED_AT + 6.0)], [row(42, "<a>", 2)], KILL_NOTES)
    assert outcome.email_problems() == []
    assert outcome.notes["sent_again_after_its_sender_was_killed"] == "<a>"


def test_a_message_received_twice_long_before_the_kill_is_a_duplicate():
    outcome = outcome_with([("<a>", KILLED_AT - 5.0), ("<a>", KILLED_AT + 6.0)], [row(42, "<a>", 2)], KILL_NOTES)
    assert [p for p in outcome.email_problems() if p.startswith("duplicate email: <a>")]


def test_a_duplicate_without_a_kill_or_without_an_expired_claim_is_a_duplicate():
    received = [("<a>", KILLED_AT - 0.003), ("<a>", KILLED_AT + 6.0)]
    assert outcome_with(received, [row(42, "<a>", 2)], {}).email_problems()
    assert outcome_with(received, [row(42, "<a>", 2)], {"killed_at_wall": KILLED_AT}).email_problems()
    assert outcome_with(received, [row(42, "<a>", 1)], KILL_NOTES).email_problems()


def test_two_messages_sent_again_after_one_kill_are_too_many():
    received = [("<a>", KILLED_AT - 0.003), ("<b>", KILLED_AT - 0.002), ("<a>", KILLED_AT + 6), ("<b>", KILLED_AT + 6)]
    outcome = outcome_with(received, [row(42, "<a>", 2), row(43, "<b>", 2)],
                           {"killed_at_wall": KILLED_AT, "claims_expired_ids": [42, 43]})
    problems = outcome.email_problems()
    assert any("one at most" in p for p in problems) and any(p.startswith("duplicate email: <b>") for p in problems)
