-- pg_apisync 0.1.0 -> 0.2.0, by ALTER EXTENSION pg_apisync UPDATE.
--
-- Keeps every job, run, rejected row and secret. Afterwards the installation is the one a fresh
-- CREATE EXTENSION of 0.2.0 makes (a test compares the two, object by object). EXECUTE grants a
-- DBA gave on a function whose signature changes are carried to the new function.
--
-- Runs with search_path = <the extension's schema>, pg_temp (ALTER EXTENSION sets it): names in
-- the extension's schema are unqualified, as in the install script.

-- Carries the EXECUTE grants of a function to its successor: exactly the old ACL (PUBLIC's
-- included), less the owner's own entry. Dropped at the end of this script.
CREATE FUNCTION apisync._carry_grants(old regprocedure, new regprocedure) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    grant_row record;
BEGIN
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', new);
    FOR grant_row IN
        SELECT a.grantee, a.is_grantable
        FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
        WHERE p.oid = old AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s%s', new,
                       CASE WHEN grant_row.grantee = 0 THEN 'PUBLIC'
                            ELSE quote_ident(grant_row.grantee::regrole::text) END,
                       CASE WHEN grant_row.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;

-- 1. The 0.1.0 functions written in SQL and PL/pgSQL go: 0.2.0 has them in Rust, checking the
--    caller and writing the catalog as the extension's owner. Those whose signature stays are
--    replaced in place below (CREATE OR REPLACE keeps their grants); their helpers go.
DROP VIEW apisync.job_progress;
DROP FUNCTION apisync._run_now(text, text);
DROP FUNCTION apisync._chunk_rows(anyelement);

-- 2. The catalog: owners are roles (regrole), not bare OIDs; job names are unique per owner; no
--    role writes the catalog directly; the secrets are read by no role and are not dumped; the
--    id sequences are dumped (without them a restored database reused run and job ids).
DROP POLICY own_secrets ON apisync.secrets;
REVOKE ALL ON apisync.secrets FROM PUBLIC;
ALTER TABLE apisync.secrets
    ALTER COLUMN owner DROP DEFAULT,
    ALTER COLUMN owner TYPE regrole USING owner::regrole;
COMMENT ON TABLE apisync.secrets IS 'Values named in options.auth. Read by no role: only the fetch of the owner''s own calls and jobs uses them. Not in dumps: create them again after a restore.';
-- Leaving the extension and joining it again takes the table out of the dumped configuration.
ALTER EXTENSION pg_apisync DROP TABLE apisync.secrets;
ALTER EXTENSION pg_apisync ADD TABLE apisync.secrets;

DROP POLICY member_jobs ON apisync.jobs;
DROP POLICY member_runs ON apisync.job_runs;
DROP POLICY member_rejects ON apisync.rejected_rows;
ALTER TABLE apisync.jobs
    DROP CONSTRAINT jobs_name_key,
    ALTER COLUMN owner DROP DEFAULT,
    ALTER COLUMN owner TYPE regrole USING owner::regrole,
    ADD UNIQUE (owner, name);
ALTER TABLE apisync.job_runs
    ALTER COLUMN owner DROP DEFAULT,
    ALTER COLUMN owner TYPE regrole USING owner::regrole,
    ADD COLUMN cut_by text,
    ADD COLUMN requests_skipped bigint NOT NULL DEFAULT 0;
ALTER TABLE apisync.rejected_rows
    ALTER COLUMN owner DROP DEFAULT,
    ALTER COLUMN owner TYPE regrole USING owner::regrole;
CREATE POLICY member_jobs ON apisync.jobs FOR SELECT
    USING (pg_catalog.pg_has_role(owner, 'MEMBER'));
CREATE POLICY member_runs ON apisync.job_runs FOR SELECT
    USING (pg_catalog.pg_has_role(owner, 'MEMBER'));
CREATE POLICY member_rejects ON apisync.rejected_rows FOR SELECT
    USING (pg_catalog.pg_has_role(owner, 'MEMBER'));
REVOKE ALL ON apisync.jobs, apisync.job_runs, apisync.rejected_rows FROM PUBLIC;
GRANT SELECT ON apisync.jobs, apisync.job_runs, apisync.rejected_rows TO PUBLIC;
REVOKE ALL ON SEQUENCE apisync.jobs_job_id_seq, apisync.job_runs_run_id_seq FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('apisync.jobs_job_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('apisync.job_runs_run_id_seq', '');

-- 3. The functions of 0.2.0.
CREATE FUNCTION apisync._job_rows(row_type anyelement) RETURNS SETOF anyelement
VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'apisync_job_rows';

-- api_fetch gains `params` (fan-out) and a pinned search_path.
CREATE FUNCTION api_fetch(
    url text,
    method text DEFAULT 'GET',
    body jsonb DEFAULT NULL,
    path text DEFAULT '$',
    headers jsonb DEFAULT '{}',
    paging jsonb DEFAULT NULL,
    options jsonb DEFAULT '{}',
    row_type anyelement DEFAULT NULL::jsonb,
    params jsonb DEFAULT NULL
) RETURNS SETOF anyelement
VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_fetch_dispatch';
SELECT apisync._carry_grants('api_fetch(text, text, jsonb, text, jsonb, jsonb, jsonb, anyelement)',
                             'api_fetch(text, text, jsonb, text, jsonb, jsonb, jsonb, anyelement, jsonb)');
DROP FUNCTION api_fetch(text, text, jsonb, text, jsonb, jsonb, jsonb, anyelement);

ALTER FUNCTION api_request(text, text, jsonb, jsonb, jsonb) SET search_path TO pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION apisync."create_secret"(
	"name" TEXT,
	"value" TEXT
) RETURNS void
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'create_secret_wrapper';

CREATE OR REPLACE FUNCTION apisync."drop_secret"(
	"name" TEXT
) RETURNS void
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'drop_secret_wrapper';

CREATE FUNCTION apisync.suggest_table(
    target text, url text, method text DEFAULT 'GET', body jsonb DEFAULT NULL,
    path text DEFAULT '$', headers jsonb DEFAULT '{}', paging jsonb DEFAULT NULL,
    options jsonb DEFAULT '{}'
) RETURNS text VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'suggest_table_wrapper';

-- create_job names its target as text (it may create it) and has no SET clause: the name is
-- looked up by the caller's search_path, everything else under a pinned one.
CREATE FUNCTION apisync.create_job(
    name text, target text, url text, method text DEFAULT 'GET', body jsonb DEFAULT NULL,
    path text DEFAULT '$', headers jsonb DEFAULT '{}', paging jsonb DEFAULT NULL,
    options jsonb DEFAULT '{}', write_method text DEFAULT 'append', key_columns text[] DEFAULT NULL,
    schedule text DEFAULT NULL, enabled boolean DEFAULT true, create_target boolean DEFAULT false
) RETURNS bigint VOLATILE
LANGUAGE c AS 'MODULE_PATHNAME', 'create_job_wrapper';
SELECT apisync._carry_grants(
    'apisync.create_job(text, regclass, text, text, jsonb, text, jsonb, jsonb, jsonb, text, text[], text, boolean)',
    'apisync.create_job(text, text, text, text, jsonb, text, jsonb, jsonb, jsonb, text, text[], text, boolean, boolean)');
DROP FUNCTION apisync.create_job(text, regclass, text, text, jsonb, text, jsonb, jsonb, jsonb, text, text[], text, boolean);
DROP FUNCTION apisync._check_job(oid, text, text, jsonb, text, jsonb, jsonb, jsonb, text, text[], text);

CREATE FUNCTION apisync."_run_progress"() RETURNS TABLE (
	"pid" INT,
	"progress" TEXT
)
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'run_progress_wrapper';

CREATE VIEW apisync.job_progress WITH (security_invoker = true) AS
    SELECT r.run_id, r.job_name, r.started_at, p.progress
    FROM apisync.job_runs r
    LEFT JOIN apisync._run_progress() p ON p.pid OPERATOR(pg_catalog.=) r.pid
    WHERE r.status OPERATOR(pg_catalog.=) 'running';
GRANT SELECT ON apisync.job_progress TO PUBLIC;

-- alter_job gains `owner` (hand a job to another role).
CREATE FUNCTION apisync.alter_job(
    name text, target regclass DEFAULT NULL, url text DEFAULT NULL, method text DEFAULT NULL,
    body jsonb DEFAULT NULL, path text DEFAULT NULL, headers jsonb DEFAULT NULL,
    paging jsonb DEFAULT NULL, options jsonb DEFAULT NULL, write_method text DEFAULT NULL,
    key_columns text[] DEFAULT NULL, schedule text DEFAULT NULL, enabled boolean DEFAULT NULL,
    owner regrole DEFAULT NULL
) RETURNS void VOLATILE
SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'alter_job_wrapper';
SELECT apisync._carry_grants(
    'apisync.alter_job(text, regclass, text, text, jsonb, text, jsonb, jsonb, jsonb, text, text[], text, boolean)',
    'apisync.alter_job(text, regclass, text, text, jsonb, text, jsonb, jsonb, jsonb, text, text[], text, boolean, regrole)');
DROP FUNCTION apisync.alter_job(text, regclass, text, text, jsonb, text, jsonb, jsonb, jsonb, text, text[], text, boolean);

CREATE OR REPLACE FUNCTION apisync.run_job(name text) RETURNS apisync.job_runs VOLATILE
SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'run_job_wrapper';

CREATE OR REPLACE FUNCTION apisync."drop_job"(
	"name" TEXT
) RETURNS void
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'drop_job_wrapper';

-- The morning status: per job its last run, the failures since a success, and when the
-- scheduler starts it next (which the scheduler records).
CREATE TABLE apisync.job_schedule (
    job_id bigint PRIMARY KEY REFERENCES apisync.jobs ON DELETE CASCADE,
    next_run timestamptz
);
ALTER TABLE apisync.job_schedule ENABLE ROW LEVEL SECURITY;
CREATE POLICY member_schedule ON apisync.job_schedule FOR SELECT
    USING (EXISTS (SELECT 1 FROM apisync.jobs j WHERE j.job_id OPERATOR(pg_catalog.=) job_schedule.job_id));
REVOKE ALL ON apisync.job_schedule FROM PUBLIC;
GRANT SELECT ON apisync.job_schedule TO PUBLIC;

CREATE VIEW apisync.job_status WITH (security_invoker = true) AS
    SELECT j.job_id, j.name, j.owner, j.target, j.write_method, j.schedule, j.enabled,
           n.next_run,
           l.run_id AS last_run_id, l.trigger AS last_trigger, l.status AS last_status,
           l.started_at AS last_started_at, l.finished_at AS last_finished_at,
           l.finished_at OPERATOR(pg_catalog.-) l.started_at AS last_duration,
           l.rows_fetched AS last_rows_fetched,
           l.rows_inserted OPERATOR(pg_catalog.+) l.rows_updated OPERATOR(pg_catalog.+) l.rows_deleted AS last_rows_written,
           l.error AS last_error, l.sqlstate AS last_sqlstate,
           s.finished_at AS last_success_at,
           (SELECT pg_catalog.count(*) FROM apisync.job_runs f
            WHERE f.job_id OPERATOR(pg_catalog.=) j.job_id AND f.status OPERATOR(pg_catalog.=) 'failed'
              AND f.run_id OPERATOR(pg_catalog.>) coalesce(s.run_id, 0)) AS consecutive_failures
    FROM apisync.jobs j
    LEFT JOIN LATERAL (
        SELECT r.* FROM apisync.job_runs r
        WHERE r.job_id OPERATOR(pg_catalog.=) j.job_id AND r.status OPERATOR(pg_catalog.<>) 'skipped'
        ORDER BY r.run_id DESC LIMIT 1) l ON true
    LEFT JOIN LATERAL (
        SELECT r.run_id, r.finished_at FROM apisync.job_runs r
        WHERE r.job_id OPERATOR(pg_catalog.=) j.job_id AND r.status OPERATOR(pg_catalog.=) 'succeeded'
        ORDER BY r.run_id DESC LIMIT 1) s ON true
    LEFT JOIN apisync.job_schedule n ON n.job_id OPERATOR(pg_catalog.=) j.job_id;
GRANT SELECT ON apisync.job_status TO PUBLIC;

-- The fetches in flight, from shared memory.
CREATE FUNCTION apisync."_fetch_progress"() RETURNS TABLE (
	"pid" INT,
	"database" oid,
	"role" oid,
	"kind" TEXT,
	"run_id" bigint,
	"started" timestamp with time zone,
	"url" TEXT,
	"state" TEXT,
	"param_sets_done" bigint,
	"param_sets_total" bigint,
	"pages" bigint,
	"rows" bigint,
	"bytes" bigint,
	"requests" bigint,
	"retries" bigint,
	"requests_in_flight" INT,
	"network_ms" double precision,
	"converting_ms" double precision
)
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'fetch_progress_rows_wrapper';

CREATE VIEW apisync.fetch_progress AS
    SELECT p.pid, d.datname, p.role::pg_catalog.regrole AS role, p.kind, p.run_id, p.started, p.url,
           p.state, p.param_sets_done, p.param_sets_total, p.pages, p.rows, p.bytes, p.requests,
           p.retries, p.requests_in_flight, p.network_ms, p.converting_ms
    FROM apisync._fetch_progress() p
    LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) p.database;
GRANT SELECT ON apisync.fetch_progress TO PUBLIC;

DROP FUNCTION apisync._carry_grants(regprocedure, regprocedure);
