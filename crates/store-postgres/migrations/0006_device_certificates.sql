-- Device certificates: X.509 certificates Herd's CA issued to devices (MQTT over mutual TLS).
-- Timestamps are milliseconds since the Unix epoch, as in 0001.

CREATE TABLE device_certificates (
    -- The serial as lowercase hex; the primary key serves the lookup behind every mTLS CONNECT.
    serial              TEXT COLLATE "C" PRIMARY KEY,
    device_id           TEXT COLLATE "C" NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    fingerprint_sha256  TEXT NOT NULL,
    not_before          BIGINT NOT NULL,
    not_after           BIGINT NOT NULL,
    created_at          BIGINT NOT NULL,
    revoked_at          BIGINT,
    pem                 TEXT NOT NULL
);

-- A device's certificates, newest first; deleting a device cascades through this index.
CREATE INDEX device_certificates_device_created ON device_certificates (device_id, created_at);
