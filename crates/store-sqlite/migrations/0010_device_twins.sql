-- Device twins: one row per device whose twin ever changed, deleted with its device. Each section
-- is JSON text `{"document": {...}, "version": n, "metadata": {"/pointer": {"at": ms, "v": n}}}`
-- (see domain::twin::TwinSection::to_stored_json): `device_desired` is the device's own desired
-- layer (what operators patch), `desired` the effective document the device sees, computed from
-- the layers. `history_seq` is the seq of the device's last history entry.

CREATE TABLE device_twins (
    device_id      TEXT    NOT NULL PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    device_desired TEXT    NOT NULL,
    desired        TEXT    NOT NULL,
    reported       TEXT    NOT NULL,
    tags           TEXT    NOT NULL,
    history_seq    INTEGER NOT NULL DEFAULT 0 CHECK (history_seq >= 0)
);

-- Every change of a twin section, newest `history_per_device` kept per device. `patch` is the
-- change as JSON merge patch text; `actor` the operator (as in the audit log), `device:<id>` or
-- `replacement:<old id>`. Timestamps are milliseconds since the Unix epoch.
CREATE TABLE device_twin_history (
    device_id TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL CHECK (seq > 0),
    section   TEXT    NOT NULL CHECK (section IN ('desired', 'reported', 'tags')),
    version   INTEGER NOT NULL CHECK (version >= 0),
    at        INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    patch     TEXT    NOT NULL,
    PRIMARY KEY (device_id, seq)
);
