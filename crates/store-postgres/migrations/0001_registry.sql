-- Herd's registry on PostgreSQL: devices and their tags, groups, API tokens and the audit chain.
--
-- Every text column that is ordered or compared uses COLLATE "C", so ordering is bytewise, exactly
-- like SQLite, and keyset pagination (`id > $cursor ORDER BY id`) is backed by the btree indexes.
-- Timestamps are milliseconds since the Unix epoch (BIGINT), as in `domain::Timestamp`.

CREATE TABLE devices (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL,
    -- JSON object text of the tags, for reads; `device_tags` holds the same pairs for filtering.
    tags        TEXT NOT NULL,
    -- JSON object text of the attributes, exactly as serialized.
    attributes  TEXT NOT NULL,
    state       TEXT COLLATE "C" NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    version     BIGINT NOT NULL
);

-- `state = $s` and `name = $n` filters walk these indexes in id order.
CREATE INDEX devices_state_id ON devices (state, id);
CREATE INDEX devices_name_id ON devices (name, id);

CREATE TABLE device_tags (
    device_id   TEXT COLLATE "C" NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    key         TEXT COLLATE "C" NOT NULL,
    value       TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (device_id, key)
);

-- A top-level `tags.k = $v` drives a page from this index, which lists the matching devices in id
-- order; the primary key serves the per-device probes of every other tag condition.
CREATE INDEX device_tags_key_value_device ON device_tags (key, value, device_id);

CREATE TABLE device_groups (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    description TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('static', 'dynamic')),
    -- The filter expression of a dynamic group, as `domain::Filter` renders it; NULL for static groups.
    filter      TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    version     BIGINT NOT NULL,
    CHECK ((kind = 'static') = (filter IS NULL))
);

CREATE TABLE group_members (
    group_id    BIGINT NOT NULL REFERENCES device_groups (id) ON DELETE CASCADE,
    device_id   TEXT COLLATE "C" NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, device_id)
);

-- Deleting a device cascades to its memberships through this index.
CREATE INDEX group_members_device ON group_members (device_id);

CREATE TABLE api_tokens (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    -- SHA-256 of the secret; the secret itself is never stored.
    hash        BYTEA NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);

-- Listing newest first.
CREATE INDEX api_tokens_created ON api_tokens (created_at, id);

CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    -- The exact JSON text that was hashed (TEXT, not JSONB, which would normalize it).
    before      TEXT,
    after       TEXT,
    prev_hash   BYTEA NOT NULL,
    hash        BYTEA NOT NULL
);
