-- Configuration profiles (see domain::profile) and the durable twin recompute queue.
-- Timestamps are milliseconds since the Unix epoch.

-- `group_name` is NULL for a fleet profile. A group with profiles cannot be deleted (the store
-- refuses it with a conflict; the foreign key is the backstop).
CREATE TABLE config_profiles (
    name          TEXT    NOT NULL PRIMARY KEY,
    description   TEXT    NOT NULL,
    group_name    TEXT    REFERENCES groups (name),
    priority      INTEGER NOT NULL,
    document_json TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    version       INTEGER NOT NULL CHECK (version > 0)
);

CREATE INDEX config_profiles_group ON config_profiles (group_name);

-- Devices whose effective desired document must be recomputed, filled in the transaction of the
-- change that can change their layers and drained by the server (store::Store::recompute_twins).
-- No foreign key: a row may outlive its device (the drain drops it), and the triggers below must
-- not fail inside a cascading delete.
CREATE TABLE twin_recompute (
    device_id TEXT    NOT NULL PRIMARY KEY,
    queued_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX twin_recompute_queued ON twin_recompute (queued_at, device_id);

-- A new device gets the fleet profiles (and those of dynamic groups it matches).
CREATE TRIGGER devices_queue_recompute_on_insert AFTER INSERT ON devices
WHEN EXISTS (SELECT 1 FROM config_profiles)
BEGIN
    INSERT OR IGNORE INTO twin_recompute (device_id, queued_at) VALUES (NEW.id, NEW.updated_at);
END;

-- Tags, name and state are what dynamic group filters look at.
CREATE TRIGGER devices_queue_recompute_on_update AFTER UPDATE OF tags_json, name, state ON devices
WHEN (OLD.tags_json IS NOT NEW.tags_json OR OLD.name IS NOT NEW.name OR OLD.state IS NOT NEW.state)
    AND EXISTS (SELECT 1 FROM config_profiles WHERE group_name IS NOT NULL)
BEGIN
    INSERT OR IGNORE INTO twin_recompute (device_id, queued_at) VALUES (NEW.id, NEW.updated_at);
END;

CREATE TRIGGER group_members_queue_recompute_on_insert AFTER INSERT ON group_members
WHEN EXISTS (SELECT 1 FROM config_profiles WHERE group_name = NEW.group_name)
BEGIN
    INSERT OR IGNORE INTO twin_recompute (device_id, queued_at)
    VALUES (NEW.device_id, CAST(unixepoch('subsec') * 1000 AS INTEGER));
END;

CREATE TRIGGER group_members_queue_recompute_on_delete AFTER DELETE ON group_members
WHEN EXISTS (SELECT 1 FROM config_profiles WHERE group_name = OLD.group_name)
    AND EXISTS (SELECT 1 FROM devices WHERE id = OLD.device_id)
BEGIN
    INSERT OR IGNORE INTO twin_recompute (device_id, queued_at)
    VALUES (OLD.device_id, CAST(unixepoch('subsec') * 1000 AS INTEGER));
END;
