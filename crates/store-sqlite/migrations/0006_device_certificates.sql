-- Device certificates: X.509 certificates Herd's CA issued to devices (MQTT over mutual TLS).
-- The primary key on `serial` serves the lookup behind every mTLS CONNECT; the second index serves
-- a device's list (newest first) and the cascade when its device is deleted.

CREATE TABLE device_certificates (
    serial             TEXT    NOT NULL PRIMARY KEY,
    device_id          TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    fingerprint_sha256 TEXT    NOT NULL,
    not_before         INTEGER NOT NULL,
    not_after          INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    revoked_at         INTEGER,
    pem                TEXT    NOT NULL
);

CREATE INDEX device_certificates_device_created ON device_certificates (device_id, created_at);
