-- Device presence: what the MQTT gateway last saw of each device's connection. One row per device
-- that ever connected, deleted with its device. Written by the gateway, not audited.
-- Timestamps are milliseconds since the Unix epoch, as in 0001.

CREATE TABLE device_presence (
    device_id              TEXT    NOT NULL PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    connected              INTEGER NOT NULL CHECK (connected IN (0, 1)),
    connected_at           INTEGER,
    disconnected_at        INTEGER,
    remote_addr            TEXT,
    protocol               TEXT,
    last_disconnect_reason TEXT
);

-- The connected devices: counted by the connectivity summary and reset at startup without a scan
-- of `devices` (the ever-connected count is the size of the primary key).
CREATE INDEX device_presence_connected ON device_presence (device_id) WHERE connected = 1;
