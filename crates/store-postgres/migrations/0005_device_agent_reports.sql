-- What each device's agent last reported about itself: its facts (sent after each connect) and the
-- health of its last heartbeat, both JSON object text exactly as serialized (TEXT, like device
-- attributes in 0001). One row per device whose agent ever reported, deleted with its device.
-- Written by the gateway, not audited. Timestamps are milliseconds since the Unix epoch, as in
-- 0001; they are arrival times.

CREATE TABLE device_agent_reports (
    device_id       TEXT COLLATE "C" PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    -- NULL until the agent reports its facts.
    facts           TEXT,
    facts_at        BIGINT,
    -- NULL until its first heartbeat.
    health          TEXT,
    heartbeat_at    BIGINT,
    heartbeat_count BIGINT NOT NULL DEFAULT 0 CHECK (heartbeat_count >= 0)
);
