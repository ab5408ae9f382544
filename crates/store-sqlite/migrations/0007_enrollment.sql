-- Enrollment groups: how devices Herd has never seen provision themselves (zero-touch).
-- Timestamps are milliseconds since the Unix epoch, as in 0001.

CREATE TABLE enrollment_groups (
    name               TEXT    NOT NULL PRIMARY KEY,
    attestation        TEXT    NOT NULL CHECK (attestation IN ('symmetric_key', 'x509', 'claim_code')),
    -- The group key of a `symmetric_key` group, sealed with the server's master key.
    sealed_key         BLOB,
    -- The uploaded CA certificate of an `x509` group (NULL: Herd's own CA).
    ca_pem             TEXT,
    enabled            INTEGER NOT NULL,
    expires_at         INTEGER,
    device_id_template TEXT,
    tags_json          TEXT    NOT NULL,
    -- JSON array of static group names.
    groups_json        TEXT    NOT NULL,
    attributes_json    TEXT    NOT NULL,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    registrations      INTEGER NOT NULL,
    CHECK ((attestation = 'symmetric_key') = (sealed_key IS NOT NULL)),
    CHECK (attestation = 'x509' OR ca_pem IS NULL)
);

-- Claim codes, kept only as the SHA-256 of the code; the unique index serves the lookup at
-- registration.
CREATE TABLE enrollment_claim_codes (
    id         TEXT    NOT NULL PRIMARY KEY,
    group_name TEXT    NOT NULL REFERENCES enrollment_groups (name) ON DELETE CASCADE,
    hash       BLOB    NOT NULL UNIQUE,
    uses       INTEGER NOT NULL,
    max_uses   INTEGER NOT NULL,
    expires_at INTEGER,
    created_at INTEGER NOT NULL
);

CREATE INDEX enrollment_claim_codes_group ON enrollment_claim_codes (group_name, created_at);

-- Which group enrolled a device, with which registration id (and claim code): what makes a
-- repeated registration an idempotent retry rather than a conflict.
CREATE TABLE device_enrollments (
    device_id       TEXT    NOT NULL PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    group_name      TEXT    NOT NULL REFERENCES enrollment_groups (name) ON DELETE CASCADE,
    registration_id TEXT    NOT NULL,
    claim_code_id   TEXT,
    first_at        INTEGER NOT NULL,
    last_at         INTEGER NOT NULL,
    count           INTEGER NOT NULL
);

CREATE INDEX device_enrollments_group ON device_enrollments (group_name);

-- The credentials provisioning issued, numbered per device (`issued` is the enrollment's count
-- at the time), so the oldest beyond two can be revoked.
CREATE TABLE provisioning_credentials (
    credential_id TEXT    NOT NULL PRIMARY KEY REFERENCES device_credentials (id) ON DELETE CASCADE,
    device_id     TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    issued        INTEGER NOT NULL
);

CREATE INDEX provisioning_credentials_device ON provisioning_credentials (device_id, issued);
