-- Device credentials: the secrets devices present when they connect, kept only as SHA-256.
-- The unique index on `hash` serves the lookup behind every device CONNECT; the second index
-- serves a device's list (newest first) and the cascade when its device is deleted.

CREATE TABLE device_credentials (
    id         TEXT    NOT NULL PRIMARY KEY,
    device_id  TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    hash       BLOB    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER
);

CREATE INDEX device_credentials_device_created ON device_credentials (device_id, created_at);
