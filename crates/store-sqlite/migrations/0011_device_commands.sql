-- Direct commands to devices (`Store::create_command` and the rest of the `commands` section).
-- `deliver_by` is when a queued command expires (its `expires_at`, or creation plus its timeout
-- without one) and `answer_by` when a delivered one times out: the sweep reads them through the
-- partial indexes below, so it costs only what is overdue.

CREATE TABLE device_commands (
    id              TEXT    NOT NULL PRIMARY KEY,
    device_id       TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    name            TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    created_by      TEXT    NOT NULL,
    timeout_secs    INTEGER NOT NULL,
    expires_at      INTEGER,
    deliver_by      INTEGER NOT NULL,
    delivered_at    INTEGER,
    answer_by       INTEGER,
    completed_at    INTEGER,
    result          TEXT,
    error_code      TEXT,
    error_message   TEXT,
    idempotency_key TEXT
);

-- A device's commands in order (lists, newest first; pending ones, oldest first; the next seq).
CREATE UNIQUE INDEX device_commands_device_seq ON device_commands (device_id, seq);
-- Lists filtered by state.
CREATE INDEX device_commands_device_state_seq ON device_commands (device_id, state, seq);
-- Idempotent retries.
CREATE INDEX device_commands_idempotency ON device_commands (device_id, idempotency_key, created_at)
    WHERE idempotency_key IS NOT NULL;
-- The sweep.
CREATE INDEX device_commands_queued_deliver_by ON device_commands (deliver_by)
    WHERE state = 'queued';
CREATE INDEX device_commands_delivered_answer_by ON device_commands (answer_by)
    WHERE state = 'delivered';
-- Retention.
CREATE INDEX device_commands_completed ON device_commands (completed_at)
    WHERE completed_at IS NOT NULL;
