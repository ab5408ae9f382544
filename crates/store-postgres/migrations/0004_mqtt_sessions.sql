-- MQTT broker state that outlives a restart: persistent sessions, their subscriptions and the QoS 1
-- and 2 messages queued for them, and retained messages. Written only by the broker's session
-- writer (one transaction per batch), not audited, and not tied to devices: a client identifier
-- need not name one. Timestamps are milliseconds since the Unix epoch, as in 0001. Text is
-- COLLATE "C" so that it sorts bytewise, as in SQLite.

CREATE TABLE mqtt_sessions (
    client_id       TEXT COLLATE "C" PRIMARY KEY,
    expiry_secs     BIGINT NOT NULL,
    -- NULL while a connection holds the session.
    disconnected_at BIGINT
);

CREATE TABLE mqtt_subscriptions (
    client_id           TEXT COLLATE "C" NOT NULL
                        REFERENCES mqtt_sessions (client_id) ON DELETE CASCADE,
    filter              TEXT COLLATE "C" NOT NULL,
    qos                 SMALLINT NOT NULL CHECK (qos IN (0, 1, 2)),
    no_local            BOOLEAN  NOT NULL,
    retain_as_published BOOLEAN  NOT NULL,
    subscription_id     BIGINT,
    PRIMARY KEY (client_id, filter)
);

CREATE TABLE mqtt_messages (
    client_id  TEXT COLLATE "C" NOT NULL REFERENCES mqtt_sessions (client_id) ON DELETE CASCADE,
    -- The broker's sequence number: the order in which the session's messages are sent.
    seq        BIGINT   NOT NULL,
    topic      TEXT     NOT NULL,
    payload    BYTEA    NOT NULL,
    qos        SMALLINT NOT NULL CHECK (qos IN (0, 1, 2)),
    retain     BOOLEAN  NOT NULL,
    -- The broker's encoding of the message's MQTT 5 properties.
    properties BYTEA    NOT NULL,
    expires_at BIGINT,
    PRIMARY KEY (client_id, seq)
);

CREATE TABLE mqtt_retained (
    topic      TEXT COLLATE "C" PRIMARY KEY,
    payload    BYTEA    NOT NULL,
    qos        SMALLINT NOT NULL CHECK (qos IN (0, 1, 2)),
    properties BYTEA    NOT NULL,
    expires_at BIGINT
);
