-- What comes first in the install script: schema apisync, the job catalog, the api_response type.
--
-- The job catalog (DESIGN.md §2.3, §2.6). Written only by the extension: its functions check the
-- caller, then write as the extension's owner; run workers record runs the same way. Every role
-- reads the rows of the roles it is a member of (row-level security); superusers read all.
-- Owners are role OIDs (regrole: shown and dumped as the quoted role name, never re-parsed).

CREATE SCHEMA IF NOT EXISTS apisync;
GRANT USAGE ON SCHEMA apisync TO PUBLIC;

-- api_request's row: a type rather than RETURNS TABLE, as its columns share names with the
-- arguments (body, headers). In the schema given to CREATE EXTENSION.
CREATE TYPE api_response AS (
    status int,
    headers jsonb,
    body text,
    body_json jsonb,
    final_url text,
    elapsed_ms double precision
);

CREATE TABLE apisync.secrets (
    owner regrole NOT NULL,
    name text NOT NULL CHECK (name <> ''),
    value text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, name)
);
COMMENT ON TABLE apisync.secrets IS 'Values named in options.auth. Read by no role: only the fetch of the owner''s own calls and jobs uses them. Not in dumps: create them again after a restore.';
ALTER TABLE apisync.secrets ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON apisync.secrets FROM PUBLIC;

CREATE TABLE apisync.jobs (
    job_id bigserial PRIMARY KEY,
    name text NOT NULL CHECK (name <> ''),
    owner regrole NOT NULL,
    target regclass NOT NULL,
    url text NOT NULL,
    method text NOT NULL DEFAULT 'GET',
    body jsonb,
    path text NOT NULL DEFAULT '$',
    headers jsonb NOT NULL DEFAULT '{}',
    paging jsonb,
    options jsonb NOT NULL DEFAULT '{}',
    write_method text NOT NULL DEFAULT 'append'
        CHECK (write_method IN ('append', 'replace', 'upsert', 'mirror')),
    key_columns text[],
    schedule text,
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- Names are unique per owner, as pg_cron's are per user.
    UNIQUE (owner, name)
);
COMMENT ON TABLE apisync.jobs IS 'Sync jobs: an API, a target table and a write method. Change them with apisync.create_job, alter_job, drop_job.';

CREATE TABLE apisync.job_runs (
    run_id bigserial PRIMARY KEY,
    job_id bigint NOT NULL,
    job_name text NOT NULL,
    owner regrole NOT NULL,
    trigger text NOT NULL CHECK (trigger IN ('manual', 'schedule')),
    status text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'skipped')),
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    requests bigint NOT NULL DEFAULT 0,
    pages bigint NOT NULL DEFAULT 0,
    bytes bigint NOT NULL DEFAULT 0,
    rows_fetched bigint NOT NULL DEFAULT 0,
    rows_inserted bigint NOT NULL DEFAULT 0,
    rows_updated bigint NOT NULL DEFAULT 0,
    rows_deleted bigint NOT NULL DEFAULT 0,
    rows_rejected bigint NOT NULL DEFAULT 0,
    error text,
    sqlstate text,
    pid int,
    -- What cut the fetch short ('max_pages'), for an append or upsert run that wrote what it got.
    cut_by text,
    -- Requests whose answer options.on_status skipped (a 404 child, say). Last, as an upgrade
    -- adds it: a fresh and an upgraded installation have the same row type.
    requests_skipped bigint NOT NULL DEFAULT 0
);
CREATE INDEX ON apisync.job_runs (job_id, run_id);
COMMENT ON TABLE apisync.job_runs IS 'One row per run, manual or scheduled, successful, failed or skipped.';

-- When the scheduler starts each job next: written by the scheduler of the database (for the jobs
-- it schedules), read by apisync.job_status. Not dumped: a restored database's scheduler reckons
-- them again.
CREATE TABLE apisync.job_schedule (
    job_id bigint PRIMARY KEY REFERENCES apisync.jobs ON DELETE CASCADE,
    next_run timestamptz
);

CREATE TABLE apisync.rejected_rows (
    run_id bigint NOT NULL,
    row_number bigint NOT NULL,
    raw jsonb,
    error text NOT NULL,
    sqlstate text NOT NULL,
    owner regrole NOT NULL
);
CREATE INDEX ON apisync.rejected_rows (run_id);

ALTER TABLE apisync.jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE apisync.job_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE apisync.rejected_rows ENABLE ROW LEVEL SECURITY;
ALTER TABLE apisync.job_schedule ENABLE ROW LEVEL SECURITY;
CREATE POLICY member_jobs ON apisync.jobs FOR SELECT
    USING (pg_catalog.pg_has_role(owner, 'MEMBER'));
CREATE POLICY member_runs ON apisync.job_runs FOR SELECT
    USING (pg_catalog.pg_has_role(owner, 'MEMBER'));
CREATE POLICY member_rejects ON apisync.rejected_rows FOR SELECT
    USING (pg_catalog.pg_has_role(owner, 'MEMBER'));
-- A job's next run shows to whoever sees the job.
CREATE POLICY member_schedule ON apisync.job_schedule FOR SELECT
    USING (EXISTS (SELECT 1 FROM apisync.jobs j WHERE j.job_id OPERATOR(pg_catalog.=) job_schedule.job_id));
REVOKE ALL ON apisync.jobs, apisync.job_runs, apisync.rejected_rows, apisync.job_schedule FROM PUBLIC;
GRANT SELECT ON apisync.jobs, apisync.job_runs, apisync.rejected_rows, apisync.job_schedule TO PUBLIC;
REVOKE ALL ON SEQUENCE apisync.jobs_job_id_seq, apisync.job_runs_run_id_seq FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('apisync.jobs', '');
SELECT pg_catalog.pg_extension_config_dump('apisync.job_runs', '');
SELECT pg_catalog.pg_extension_config_dump('apisync.rejected_rows', '');
-- The id sequences too: a restored database must not hand out ids its runs and jobs hold.
-- The secrets are not dumped: a dump is copied where the credentials must not go (staging, a
-- laptop); after a restore their owners create them again (README: "Backups and restores").
SELECT pg_catalog.pg_extension_config_dump('apisync.jobs_job_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('apisync.job_runs_run_id_seq', '');
