-- MQTT broker state that outlives a restart: persistent sessions, their subscriptions and the QoS 1
-- and 2 messages queued for them, and retained messages. Written only by the broker's session
-- writer (one transaction per batch), not audited, and not tied to devices: a client identifier
-- need not name one. Timestamps are milliseconds since the Unix epoch, as in 0001.

CREATE TABLE mqtt_sessions (
    client_id       TEXT    NOT NULL PRIMARY KEY,
    expiry_secs     INTEGER NOT NULL,
    -- NULL while a connection holds the session.
    disconnected_at INTEGER
);

CREATE TABLE mqtt_subscriptions (
    client_id           TEXT    NOT NULL REFERENCES mqtt_sessions (client_id) ON DELETE CASCADE,
    filter              TEXT    NOT NULL,
    qos                 INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
    no_local            INTEGER NOT NULL CHECK (no_local IN (0, 1)),
    retain_as_published INTEGER NOT NULL CHECK (retain_as_published IN (0, 1)),
    subscription_id     INTEGER,
    PRIMARY KEY (client_id, filter)
) WITHOUT ROWID;

CREATE TABLE mqtt_messages (
    client_id  TEXT    NOT NULL REFERENCES mqtt_sessions (client_id) ON DELETE CASCADE,
    -- The broker's sequence number: the order in which the session's messages are sent.
    seq        INTEGER NOT NULL,
    topic      TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    qos        INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
    retain     INTEGER NOT NULL CHECK (retain IN (0, 1)),
    -- The broker's encoding of the message's MQTT 5 properties.
    properties BLOB    NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (client_id, seq)
);

CREATE TABLE mqtt_retained (
    topic      TEXT    NOT NULL PRIMARY KEY,
    payload    BLOB    NOT NULL,
    qos        INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
    properties BLOB    NOT NULL,
    expires_at INTEGER
) WITHOUT ROWID;
