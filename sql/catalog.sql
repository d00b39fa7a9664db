-- Sync jobs (DESIGN.md §2.3): the catalog, its row-level security, and the SQL wrappers.
-- A role sees and changes only the jobs, runs and rejected rows of roles it belongs to;
-- superusers see all.

CREATE TABLE apisync.jobs (
    job_id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE CHECK (name <> ''),
    owner oid NOT NULL DEFAULT current_user::regrole::oid,
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
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE apisync.jobs IS 'Sync jobs: an API, a target table and a write method. Change them with apisync.create_job, alter_job, drop_job.';

CREATE TABLE apisync.job_runs (
    run_id bigserial PRIMARY KEY,
    job_id bigint NOT NULL,
    job_name text NOT NULL,
    owner oid NOT NULL DEFAULT current_user::regrole::oid,
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
    pid int
);
CREATE INDEX ON apisync.job_runs (job_id, run_id);
COMMENT ON TABLE apisync.job_runs IS 'One row per run, manual or scheduled, successful, failed or skipped.';

CREATE TABLE apisync.rejected_rows (
    run_id bigint NOT NULL,
    row_number bigint NOT NULL,
    raw jsonb,
    error text NOT NULL,
    sqlstate text NOT NULL,
    owner oid NOT NULL DEFAULT current_user::regrole::oid
);
CREATE INDEX ON apisync.rejected_rows (run_id);

ALTER TABLE apisync.jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE apisync.job_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE apisync.rejected_rows ENABLE ROW LEVEL SECURITY;
CREATE POLICY member_jobs ON apisync.jobs
    USING (pg_has_role(current_user, owner, 'MEMBER'))
    WITH CHECK (owner = current_user::regrole::oid);
CREATE POLICY member_runs ON apisync.job_runs
    USING (pg_has_role(current_user, owner, 'MEMBER'))
    WITH CHECK (pg_has_role(current_user, owner, 'MEMBER'));
CREATE POLICY member_rejects ON apisync.rejected_rows
    USING (pg_has_role(current_user, owner, 'MEMBER'))
    WITH CHECK (pg_has_role(current_user, owner, 'MEMBER'));
-- The functions validate; a role may also write its own rows directly, which are validated again
-- when the job runs. Runs are written by the run worker as the job's owner.
GRANT SELECT, INSERT, UPDATE, DELETE ON apisync.jobs TO PUBLIC;
GRANT USAGE ON SEQUENCE apisync.jobs_job_id_seq TO PUBLIC;
GRANT SELECT, INSERT, UPDATE ON apisync.job_runs TO PUBLIC;
GRANT SELECT, INSERT ON apisync.rejected_rows TO PUBLIC;
GRANT USAGE ON SEQUENCE apisync.job_runs_run_id_seq TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('apisync.jobs', '');
SELECT pg_catalog.pg_extension_config_dump('apisync.job_runs', '');
SELECT pg_catalog.pg_extension_config_dump('apisync.rejected_rows', '');

-- Runs the job now, in a background worker as the job's owner, and returns its run row. A failed
-- run is recorded, then raised with its SQLSTATE (so pg_cron records the failure too).
CREATE FUNCTION apisync.run_job(name text) RETURNS apisync.job_runs
LANGUAGE plpgsql AS $$
DECLARE
    run apisync.job_runs;
    id bigint;
BEGIN
    -- Two statements: the second one's snapshot sees what the run worker committed.
    id := apisync._run_now(run_job.name, 'manual');
    SELECT * INTO run FROM apisync.job_runs r WHERE r.run_id = id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'apisync job "%": the run worker ended without recording run %', run_job.name, id
            USING ERRCODE = 'XX000', HINT = 'see the server log';
    END IF;
    IF run.status = 'failed' THEN
        RAISE EXCEPTION 'apisync job "%" (run %) failed: %', run_job.name, run.run_id, run.error
            USING ERRCODE = coalesce(run.sqlstate, 'XX000');
    ELSIF run.status = 'running' THEN
        -- The worker ended without closing the run: it was killed or the server is stopping.
        RAISE EXCEPTION 'apisync job "%" (run %) was interrupted: its worker ended before the run finished',
            run_job.name, run.run_id USING ERRCODE = '57P01';
    ELSIF run.status = 'skipped' THEN
        RAISE NOTICE 'apisync job "%" is running already: this run was skipped', run_job.name;
    END IF;
    RETURN run;
END
$$;

-- Runs in flight, with the progress their worker reports.
CREATE VIEW apisync.job_progress WITH (security_invoker = true) AS
    SELECT r.run_id, r.job_name, r.started_at, a.query AS progress
    FROM apisync.job_runs r
    LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = r.pid AND a.backend_type = 'apisync run'
    WHERE r.status = 'running';
GRANT SELECT ON apisync.job_progress TO PUBLIC;

CREATE FUNCTION apisync.create_job(
    name text, target regclass, url text, method text DEFAULT 'GET', body jsonb DEFAULT NULL,
    path text DEFAULT '$', headers jsonb DEFAULT '{}', paging jsonb DEFAULT NULL,
    options jsonb DEFAULT '{}', write_method text DEFAULT 'append', key_columns text[] DEFAULT NULL,
    schedule text DEFAULT NULL, enabled boolean DEFAULT true
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    keys text[];
    id bigint;
BEGIN
    keys := apisync._check_job(target, url, method, body, path, headers, paging, options,
                               write_method, key_columns, schedule);
    INSERT INTO apisync.jobs (name, target, url, method, body, path, headers, paging, options,
                              write_method, key_columns, schedule, enabled)
    VALUES (create_job.name, create_job.target, create_job.url, upper(create_job.method),
            create_job.body, create_job.path, coalesce(create_job.headers, '{}'),
            create_job.paging, coalesce(create_job.options, '{}'), create_job.write_method, keys,
            create_job.schedule, create_job.enabled)
    RETURNING job_id INTO id;
    RETURN id;
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'apisync job "%" exists already', create_job.name USING ERRCODE = 'duplicate_object';
END
$$;

-- Changes the arguments given (NULL leaves one as it is), validating the result as create_job does.
CREATE FUNCTION apisync.alter_job(
    name text, target regclass DEFAULT NULL, url text DEFAULT NULL, method text DEFAULT NULL,
    body jsonb DEFAULT NULL, path text DEFAULT NULL, headers jsonb DEFAULT NULL,
    paging jsonb DEFAULT NULL, options jsonb DEFAULT NULL, write_method text DEFAULT NULL,
    key_columns text[] DEFAULT NULL, schedule text DEFAULT NULL, enabled boolean DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    job apisync.jobs;
BEGIN
    SELECT * INTO job FROM apisync.jobs j WHERE j.name = alter_job.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'apisync job "%" does not exist', alter_job.name USING ERRCODE = 'undefined_object';
    END IF;
    job.target := coalesce(alter_job.target, job.target);
    job.url := coalesce(alter_job.url, job.url);
    job.method := upper(coalesce(alter_job.method, job.method));
    job.body := coalesce(alter_job.body, job.body);
    job.path := coalesce(alter_job.path, job.path);
    job.headers := coalesce(alter_job.headers, job.headers);
    job.paging := coalesce(alter_job.paging, job.paging);
    job.options := coalesce(alter_job.options, job.options);
    -- Keys follow the write method unless given: the check derives them again.
    IF alter_job.write_method IS NOT NULL AND alter_job.key_columns IS NULL THEN
        job.key_columns := NULL;
    END IF;
    job.write_method := coalesce(alter_job.write_method, job.write_method);
    job.key_columns := coalesce(alter_job.key_columns, job.key_columns);
    job.schedule := coalesce(alter_job.schedule, job.schedule);
    job.enabled := coalesce(alter_job.enabled, job.enabled);
    job.key_columns := apisync._check_job(job.target, job.url, job.method, job.body, job.path,
                                          job.headers, job.paging, job.options, job.write_method,
                                          job.key_columns, job.schedule);
    UPDATE apisync.jobs j SET target = job.target, url = job.url, method = job.method,
        body = job.body, path = job.path, headers = job.headers, paging = job.paging,
        options = job.options, write_method = job.write_method, key_columns = job.key_columns,
        schedule = job.schedule, enabled = job.enabled, updated_at = now()
    WHERE j.job_id = job.job_id;
END
$$;

CREATE FUNCTION apisync.drop_job(name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM apisync.jobs j WHERE j.name = drop_job.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'apisync job "%" does not exist', drop_job.name USING ERRCODE = 'undefined_object';
    END IF;
END
$$;
