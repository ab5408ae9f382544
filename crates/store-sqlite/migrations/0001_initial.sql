-- Herd's registry on SQLite: devices and their tags, groups, API tokens and the audit chain.
-- Timestamps are milliseconds since the Unix epoch (UTC). Text compares with the BINARY collation
-- (byte order of UTF-8, which is code point order), which the filter translation relies on.

CREATE TABLE devices (
    id              TEXT    NOT NULL PRIMARY KEY,
    name            TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    tags_json       TEXT    NOT NULL,
    attributes_json TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    version         INTEGER NOT NULL
);

-- Filtered pages stay in id order: `state = ? and id > ? order by id` and the same for name
-- walk these indexes without sorting.
CREATE INDEX devices_state_id ON devices (state, id);
CREATE INDEX devices_name_id ON devices (name, id);

-- One row per tag, so tag filters are index lookups rather than JSON scans. The primary key
-- serves `key = ? and value = ?` in device id order (the driver of a tag-filtered page); the
-- second index serves the per-device probe (`device_id = ? and key = ?`) and cascading deletes.
CREATE TABLE device_tags (
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (key, value, device_id)
) WITHOUT ROWID;

CREATE INDEX device_tags_device_key ON device_tags (device_id, key);

CREATE TABLE groups (
    name        TEXT    NOT NULL PRIMARY KEY,
    description TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('static', 'dynamic')),
    filter      TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    version     INTEGER NOT NULL
);

CREATE TABLE group_members (
    group_name TEXT NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
    device_id  TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    PRIMARY KEY (group_name, device_id)
) WITHOUT ROWID;

CREATE INDEX group_members_device ON group_members (device_id);

CREATE TABLE api_tokens (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    hash       BLOB    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER
);

CREATE INDEX api_tokens_created ON api_tokens (created_at, id);

-- The hash-chained audit log (see domain::audit). `before` and `after` hold the exact JSON text
-- that was hashed.
CREATE TABLE audit (
    seq       INTEGER NOT NULL PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    resource  TEXT    NOT NULL,
    before    TEXT,
    after     TEXT,
    prev_hash BLOB    NOT NULL,
    hash      BLOB    NOT NULL
);
