-- Fleet jobs (see domain::job): one row per job with its spec, state and per-state execution
-- counters (kept exact in the transaction of every change, so a job's progress is one row read),
-- and one row per targeted device's execution. Timestamps are milliseconds since the Unix epoch.

CREATE TABLE jobs (
    id             TEXT    NOT NULL PRIMARY KEY,
    -- The spec as `store::jobs::spec_to_json` writes it.
    spec_json      TEXT    NOT NULL,
    state          TEXT    NOT NULL
        CHECK (state IN ('in_progress', 'paused', 'canceled', 'aborted', 'completed')),
    continuous     INTEGER NOT NULL CHECK (continuous IN (0, 1)),
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    version        INTEGER NOT NULL,
    queued         INTEGER NOT NULL DEFAULT 0,
    in_progress    INTEGER NOT NULL DEFAULT 0,
    succeeded      INTEGER NOT NULL DEFAULT 0,
    failed         INTEGER NOT NULL DEFAULT 0,
    rejected       INTEGER NOT NULL DEFAULT 0,
    timed_out      INTEGER NOT NULL DEFAULT 0,
    canceled       INTEGER NOT NULL DEFAULT 0,
    removed        INTEGER NOT NULL DEFAULT 0,
    -- The rollout window (`domain::RolloutWindow`): where it starts, how many started in it.
    window_start   INTEGER,
    window_started INTEGER NOT NULL DEFAULT 0,
    -- The position of the abort criterion that aborted the job.
    aborted_by     INTEGER
);

-- `list_jobs` with a state filter, in id order.
CREATE INDEX jobs_state_id ON jobs (state, id);
-- The continuous jobs a device joining a target may need an execution of: few rows.
CREATE INDEX jobs_continuous_active ON jobs (id)
    WHERE continuous = 1 AND state IN ('in_progress', 'paused');

-- `device_id` is a plain id, not a foreign key: an execution outlives its device (it is marked
-- `removed`), and its job's counters must not change behind the store's back.
CREATE TABLE job_executions (
    job_id         TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    device_id      TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('queued', 'in_progress', 'succeeded',
        'failed', 'rejected', 'timed_out', 'canceled', 'removed')),
    attempt        INTEGER NOT NULL,
    not_before     INTEGER NOT NULL,
    started_at     INTEGER,
    timeout_at     INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    version        INTEGER NOT NULL,
    -- A JSON object (`domain::StatusDetails`, bounded size).
    status_details TEXT    NOT NULL,
    PRIMARY KEY (job_id, device_id)
) WITHOUT ROWID;

-- The next queued executions of a job (and a job's executions in one state), in device id order.
CREATE INDEX job_executions_job_state ON job_executions (job_id, state, device_id);
-- The executions of a device.
CREATE INDEX job_executions_device ON job_executions (device_id, job_id);
-- In-progress executions by timeout.
CREATE INDEX job_executions_timeout ON job_executions (timeout_at)
    WHERE state = 'in_progress' AND timeout_at IS NOT NULL;
