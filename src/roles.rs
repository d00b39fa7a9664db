//! Whose rights a statement runs with (DESIGN.md §2.6): the caller's (GetUserId, an OID — never a
//! role name parsed again), the extension owner's for writes to the catalog, a job owner's for its
//! run. Also the server's own identifier quoting, and the privilege that reaches the network.

use std::ffi::{CStr, CString};

use pgrx::pg_sys::{self, Oid};

use crate::error::{Error, Result, SqlState};

/// The role whose rights the current statement has.
pub fn current_user() -> Oid {
    // SAFETY: reads a session variable on the backend thread.
    unsafe { pg_sys::GetUserId() }
}

/// Runs `body` with the rights of `role`, as a SECURITY DEFINER function would, with SET ROLE and
/// SET SESSION AUTHORIZATION refused inside (SECURITY_LOCAL_USERID_CHANGE); the previous identity
/// comes back afterwards, also when `body` raises.
pub fn as_role<R>(role: Oid, body: impl FnOnce() -> R) -> R {
    struct Restore(Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: puts back what was read below; sets two session variables, no ereport.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
        }
    }
    let (mut saved, mut context) = (Oid::INVALID, 0);
    // SAFETY: session variables of the backend thread.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved, &mut context);
        pg_sys::SetUserIdAndSecContext(role, context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    let _restore = Restore(saved, context);
    body()
}

/// Runs `body` with `search_path = pg_catalog, pg_temp`, as a function's SET clause would, for
/// a function that must first read a name by its caller's search_path. The caller's setting comes
/// back afterwards; when `body` raises, the (sub)transaction's end puts it back.
pub fn with_pinned_search_path<R>(body: impl FnOnce() -> R) -> R {
    // SAFETY: the GUC calls fmgr_security_definer makes for a SET clause, on the backend thread.
    let nest = unsafe {
        let nest = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        nest
    };
    let result = body();
    // SAFETY: closes the nest level opened above.
    unsafe { pg_sys::AtEOXact_GUC(true, nest) };
    result
}

/// Runs `body` as the extension's owner, who owns the catalog: the one way the extension's
/// functions write `apisync.*`, after checking the caller.
pub fn as_catalog_owner<R>(body: impl FnOnce() -> R) -> R {
    as_role(extension_owner(), body)
}

fn extension_owner() -> Oid {
    crate::sql::read_one::<Oid>(
        "SELECT extowner FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_apisync'",
        &[],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| {
        crate::sql::raise(Error::new(
            SqlState::UndefinedObject,
            "extension \"pg_apisync\" is not installed in this database",
        ))
    })
}

/// The name of `role`, or `None` when no such role exists (dropped).
pub fn role_name(role: Oid) -> Option<String> {
    if role == Oid::INVALID {
        return None;
    }
    crate::sql::read_one::<String>(
        "SELECT rolname::pg_catalog.text FROM pg_catalog.pg_roles WHERE oid OPERATOR(pg_catalog.=) $1",
        &[role.into()],
    )
    .ok()
    .flatten()
}

pub fn is_superuser(role: Oid) -> bool {
    // SAFETY: a catalog lookup on the backend thread.
    unsafe { pg_sys::superuser_arg(role) }
}

pub fn is_member(role: Oid, of: Oid) -> bool {
    // SAFETY: a catalog lookup on the backend thread.
    unsafe { pg_sys::has_privs_of_role(role, of) }
}

/// `name` quoted as the server quotes identifiers (reserved words included).
pub fn quote(name: &str) -> String {
    let Ok(c_name) = CString::new(name) else {
        crate::sql::raise(Error::invalid(format!(
            "the identifier \"{}\" contains a NUL character",
            name.replace('\0', "\\0")
        )))
    };
    // SAFETY: quote_identifier returns its argument or a palloc'd copy, both valid C strings.
    unsafe {
        let quoted = pg_sys::quote_identifier(c_name.as_ptr());
        CStr::from_ptr(quoted).to_string_lossy().into_owned()
    }
}

/// The network is reached only by roles with EXECUTE on `api_fetch` (DESIGN.md §2.6). A job's
/// fetch checks its owner here before the first request of each run; create_job checks its caller.
pub fn require_network_privilege(role: Oid) -> Result<()> {
    let api_fetch = crate::sql::read_one::<Oid>(
        "SELECT p.oid FROM pg_catalog.pg_proc p
         JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
              AND d.objid OPERATOR(pg_catalog.=) p.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'
         JOIN pg_catalog.pg_extension e ON e.oid OPERATOR(pg_catalog.=) d.refobjid
         WHERE e.extname OPERATOR(pg_catalog.=) 'pg_apisync' AND p.proname OPERATOR(pg_catalog.=) 'api_fetch'",
        &[],
    )
    .ok()
    .flatten()
    .ok_or_else(|| Error::internal("api_fetch of extension pg_apisync was not found"))?;
    // SAFETY: a catalog lookup on the backend thread.
    let granted = unsafe { pg_sys::pg_proc_aclcheck(api_fetch, role, pg_sys::ACL_EXECUTE as _) }
        == pg_sys::AclResult::ACLCHECK_OK;
    if granted {
        return Ok(());
    }
    let name = role_name(role).unwrap_or_else(|| format!("OID {}", role.to_u32()));
    Err(Error::new(
        SqlState::InsufficientPrivilege,
        format!("permission denied: role {} may not reach the network", quote(&name)),
    )
    .with_detail("jobs make their requests with their owner's EXECUTE privilege on api_fetch")
    .with_hint(format!(
        "a DBA grants it: GRANT EXECUTE ON FUNCTION api_fetch(text, text, jsonb, text, jsonb, jsonb, jsonb, anyelement, jsonb) TO {}",
        quote(&name)
    )))
}
