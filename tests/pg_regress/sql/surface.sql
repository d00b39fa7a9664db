-- The SQL surface after CREATE EXTENSION: functions with their arguments, who may execute them,
-- and who may read or write the catalog (as seen by public_probe, a role with no grants).
CREATE ROLE public_probe;
CREATE EXTENSION pg_apisync;

SELECT p.oid::regprocedure AS function, pg_get_function_result(p.oid) AS returns,
       p.prosecdef AS security_definer, p.proconfig AS settings,
       has_function_privilege('public_probe', p.oid, 'EXECUTE') AS public_may_execute
FROM pg_proc p
JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_apisync'
ORDER BY p.oid::regprocedure::text;

SELECT c.oid::regclass AS relation, c.relkind, c.relrowsecurity AS row_security,
       has_table_privilege('public_probe', c.oid, 'SELECT') AS select,
       has_table_privilege('public_probe', c.oid, 'INSERT') AS insert,
       has_table_privilege('public_probe', c.oid, 'UPDATE') AS update,
       has_table_privilege('public_probe', c.oid, 'DELETE') AS delete
FROM pg_class c
JOIN pg_depend d ON d.objid = c.oid AND d.classid = 'pg_class'::regclass AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_apisync'
ORDER BY c.oid::regclass::text;

SELECT a.attrelid::regclass AS relation, a.attname AS column, format_type(a.atttypid, a.atttypmod) AS type
FROM pg_attribute a
WHERE a.attrelid IN ('apisync.jobs'::regclass, 'apisync.job_runs'::regclass, 'apisync.rejected_rows'::regclass)
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid::regclass::text, a.attnum;
