-- Enrollment groups: how devices Herd has never seen provision themselves (zero-touch).
-- Timestamps are milliseconds since the Unix epoch, as in 0001.

CREATE TABLE enrollment_groups (
    name               TEXT COLLATE "C" PRIMARY KEY,
    attestation        TEXT NOT NULL CHECK (attestation IN ('symmetric_key', 'x509', 'claim_code')),
    -- The group key of a `symmetric_key` group, sealed with the server's master key.
    sealed_key         BYTEA,
    -- The uploaded CA certificate of an `x509` group (NULL: Herd's own CA).
    ca_pem             TEXT,
    enabled            BOOLEAN NOT NULL,
    expires_at         BIGINT,
    device_id_template TEXT,
    tags               TEXT NOT NULL,
    -- JSON array of static group names.
    groups             TEXT NOT NULL,
    attributes         TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    registrations      BIGINT NOT NULL,
    CHECK ((attestation = 'symmetric_key') = (sealed_key IS NOT NULL)),
    CHECK (attestation = 'x509' OR ca_pem IS NULL)
);

-- Claim codes, kept only as the SHA-256 of the code; the unique index serves the lookup at
-- registration.
CREATE TABLE enrollment_claim_codes (
    id         TEXT COLLATE "C" PRIMARY KEY,
    group_name TEXT COLLATE "C" NOT NULL REFERENCES enrollment_groups (name) ON DELETE CASCADE,
    hash       BYTEA NOT NULL UNIQUE,
    uses       BIGINT NOT NULL,
    max_uses   BIGINT NOT NULL,
    expires_at BIGINT,
    created_at BIGINT NOT NULL
);

CREATE INDEX enrollment_claim_codes_group ON enrollment_claim_codes (group_name, created_at);

-- Which group enrolled a device, with which registration id (and claim code): what makes a
-- repeated registration an idempotent retry rather than a conflict.
CREATE TABLE device_enrollments (
    device_id       TEXT COLLATE "C" PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    group_name      TEXT COLLATE "C" NOT NULL REFERENCES enrollment_groups (name) ON DELETE CASCADE,
    registration_id TEXT COLLATE "C" NOT NULL,
    claim_code_id   TEXT COLLATE "C",
    first_at        BIGINT NOT NULL,
    last_at         BIGINT NOT NULL,
    count           BIGINT NOT NULL
);

CREATE INDEX device_enrollments_group ON device_enrollments (group_name);

-- The credentials provisioning issued, numbered per device (`issued` is the enrollment's count
-- at the time), so the oldest beyond two can be revoked.
CREATE TABLE provisioning_credentials (
    credential_id TEXT COLLATE "C" PRIMARY KEY REFERENCES device_credentials (id) ON DELETE CASCADE,
    device_id     TEXT COLLATE "C" NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    issued        BIGINT NOT NULL
);

CREATE INDEX provisioning_credentials_device ON provisioning_credentials (device_id, issued);
