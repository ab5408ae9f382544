-- What each device's agent last reported about itself: its facts (sent after each connect) and the
-- health of its last heartbeat, both JSON object text exactly as serialized. One row per device
-- whose agent ever reported, deleted with its device. Written by the gateway, not audited.
-- Timestamps are milliseconds since the Unix epoch, as in 0001; they are arrival times.

CREATE TABLE device_agent_reports (
    device_id       TEXT    NOT NULL PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    -- NULL until the agent reports its facts.
    facts           TEXT,
    facts_at        INTEGER,
    -- NULL until its first heartbeat.
    health          TEXT,
    heartbeat_at    INTEGER,
    heartbeat_count INTEGER NOT NULL DEFAULT 0 CHECK (heartbeat_count >= 0)
);
