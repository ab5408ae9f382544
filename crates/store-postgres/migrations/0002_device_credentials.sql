-- Device credentials: the secrets devices present when they connect (MQTT password).
-- Timestamps are milliseconds since the Unix epoch, as in 0001.

CREATE TABLE device_credentials (
    id          TEXT COLLATE "C" PRIMARY KEY,
    device_id   TEXT COLLATE "C" NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    -- SHA-256 of the secret; the secret itself is never stored. The unique index serves the
    -- lookup behind every device CONNECT.
    hash        BYTEA NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);

-- A device's credentials, newest first; deleting a device cascades through this index.
CREATE INDEX device_credentials_device_created ON device_credentials (device_id, created_at);
