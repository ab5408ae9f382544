-- Configuration profiles (see domain::profile) and the durable twin recompute queue, as in the
-- SQLite migration 0013. Timestamps are milliseconds since the Unix epoch.

-- `group_name` is NULL for a fleet profile. A group with profiles cannot be deleted (the store
-- refuses it with a conflict; the foreign key is the backstop).
CREATE TABLE config_profiles (
    name          TEXT COLLATE "C" PRIMARY KEY,
    description   TEXT    NOT NULL,
    group_name    TEXT COLLATE "C" REFERENCES device_groups (name),
    priority      INTEGER NOT NULL,
    -- The document as JSON object text.
    document_json TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    version       BIGINT  NOT NULL CHECK (version > 0)
);

CREATE INDEX config_profiles_group ON config_profiles (group_name);

-- Devices whose effective desired document must be recomputed, filled in the transaction of the
-- change that can change their layers and drained by the server (store::Store::recompute_twins).
-- No foreign key: a row may outlive its device (the drain drops it), and the triggers below must
-- not fail inside a cascading delete.
CREATE TABLE twin_recompute (
    device_id TEXT COLLATE "C" PRIMARY KEY,
    queued_at BIGINT NOT NULL
);

CREATE INDEX twin_recompute_queued ON twin_recompute (queued_at, device_id);

-- A new device gets the fleet profiles (and those of dynamic groups it matches).
CREATE FUNCTION twin_recompute_on_device_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM config_profiles) THEN
        INSERT INTO twin_recompute (device_id, queued_at) VALUES (NEW.id, NEW.updated_at)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_queue_recompute_on_insert AFTER INSERT ON devices
FOR EACH ROW EXECUTE FUNCTION twin_recompute_on_device_insert();

-- Tags, name and state are what dynamic group filters look at.
CREATE FUNCTION twin_recompute_on_device_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM config_profiles WHERE group_name IS NOT NULL) THEN
        INSERT INTO twin_recompute (device_id, queued_at) VALUES (NEW.id, NEW.updated_at)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_queue_recompute_on_update AFTER UPDATE OF tags, name, state ON devices
FOR EACH ROW
WHEN (OLD.tags IS DISTINCT FROM NEW.tags OR OLD.name IS DISTINCT FROM NEW.name
      OR OLD.state IS DISTINCT FROM NEW.state)
EXECUTE FUNCTION twin_recompute_on_device_update();

CREATE FUNCTION twin_recompute_on_member_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM config_profiles p JOIN device_groups g ON g.name = p.group_name
               WHERE g.id = NEW.group_id) THEN
        INSERT INTO twin_recompute (device_id, queued_at)
        VALUES (NEW.device_id, (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER group_members_queue_recompute_on_insert AFTER INSERT ON group_members
FOR EACH ROW EXECUTE FUNCTION twin_recompute_on_member_insert();

-- Inside a cascading device delete the device is already gone: nothing to queue. (A group with
-- profiles cannot be deleted, so a cascading group delete finds no profiles.)
CREATE FUNCTION twin_recompute_on_member_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM config_profiles p JOIN device_groups g ON g.name = p.group_name
               WHERE g.id = OLD.group_id)
       AND EXISTS (SELECT 1 FROM devices WHERE id = OLD.device_id) THEN
        INSERT INTO twin_recompute (device_id, queued_at)
        VALUES (OLD.device_id, (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER group_members_queue_recompute_on_delete AFTER DELETE ON group_members
FOR EACH ROW EXECUTE FUNCTION twin_recompute_on_member_delete();
