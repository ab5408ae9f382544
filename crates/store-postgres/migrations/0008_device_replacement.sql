-- Device replacement (RMA): a device's predecessor (the device it replaced) and successor (the
-- device that replaced it). Plain ids, not foreign keys: they are history, and outlive a deleted
-- device. A device is replaced at most once, so a predecessor has at most one successor.

ALTER TABLE devices
    ADD COLUMN predecessor_id TEXT COLLATE "C",
    ADD COLUMN successor_id   TEXT COLLATE "C";

CREATE UNIQUE INDEX devices_predecessor ON devices (predecessor_id) WHERE predecessor_id IS NOT NULL;
