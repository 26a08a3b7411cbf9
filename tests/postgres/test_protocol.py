"""The database's side of the shared contracts agrees with `kubetasks.worker.protocol`."""

from __future__ import annotations

import json

import pytest

from kubetasks.worker import db, protocol, queue


def test_the_task_state_enum_is_the_protocol_states(conn: db.Conn) -> None:
    row = conn.execute("SELECT enum_range(NULL::kubetasks.task_state)::text[] AS states").fetchone()
    assert row is not None and tuple(row["states"]) == protocol.STATES
    assert set(protocol.LIVE_STATES) | set(protocol.FINAL_STATES) == set(protocol.STATES)
    assert not set(protocol.LIVE_STATES) & set(protocol.FINAL_STATES)


def test_trigger_payloads_decode_with_the_protocol(dsn: str, conn: db.Conn) -> None:
    with db.connect(dsn) as listener:
        for channel in (protocol.QUEUE_CHANNEL, protocol.STATE_CHANNEL, protocol.CANCEL_CHANNEL):
            listener.execute(f"LISTEN {channel}")
        task = queue.enqueue(conn, "t.noop", {}, queue="team:billing:eu", object_ref="default/run-1",
                              validate=False)  # no actor module loaded here
        queue.cancel_task(conn, task.id, "test")
        got = {n.channel: n.payload for n in listener.notifies(timeout=5, stop_after=3)}
    assert protocol.decode_wakeup(got[protocol.QUEUE_CHANNEL]) == ("team:billing:eu", task.id)
    assert got[protocol.QUEUE_CHANNEL] == protocol.encode_wakeup("team:billing:eu", task.id)
    assert protocol.decode_state(got[protocol.STATE_CHANNEL]) == (task.id, "cancelled")
    assert protocol.decode_cancel(got[protocol.CANCEL_CHANNEL]) == task.id


def test_malformed_payloads_decode_to_none() -> None:
    assert protocol.decode_wakeup("no-id") is None
    assert protocol.decode_wakeup(":12") is None
    assert protocol.decode_wakeup("q:x") is None
    assert protocol.decode_state("12:exploded") is None
    assert protocol.decode_cancel("12a") is None


def test_json_and_jsonb_values_read_back_as_they_were_written(conn: db.Conn) -> None:
    # Connections decode JSON with the scanner alone when the text is exactly one value (jsonb's own output);
    # a json column keeps its input's spacing, which must still decode, and bad text must still fail.
    values = [{"i": 12345, "f": 0.5, "s": "é \\\" x", "n": None, "l": [1, [2, {}]]}, [], "text", 7, None, True]
    for value in values:
        row = conn.execute("SELECT %(v)s::jsonb AS b, (' ' || %(v)s::text || E'\\n')::json AS j",
                           {"v": json.dumps(value)}).fetchone()
        assert row == {"b": value, "j": value}
    with pytest.raises(json.JSONDecodeError):
        db.load_json(b'{"a": 1} trailing')
    assert db.load_json('{"a": 1}  ') == {"a": 1}
