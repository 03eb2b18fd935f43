//! Which paths a caller may write, by the role its certificate names (on a node with TLS;
//! without it, whoever reaches the port may write anything).
//!
//! Each service owns one subtree of a cluster's tree: every path whose first segment that
//! names a service role is that role's (`/marina/master/members/…` is the masters',
//! `/marina/gateway/apps/…` the gateways'), whatever root the cluster lives under. A master
//! or gateway writes only its own subtree; agents only read; operators and coord nodes (a
//! follower forwarding a request it already checked) write anywhere. Every role that may
//! call the API may read everything: services learn from each other's subtrees (an agent
//! finds the leading master under `/marina/master/members`).

use marina_daemon::tls::{Caller, Role};
use tonic::Status;

use crate::command::Op;

/// The roles whose names mark a subtree.
const SUBTREE_ROLES: [Role; 4] = [Role::Coord, Role::Master, Role::Agent, Role::Gateway];

/// The role owning `path`: the first segment naming a service role.
fn owner(path: &str) -> Option<Role> {
    path.split('/').find_map(|segment| SUBTREE_ROLES.into_iter().find(|role| role.as_str() == segment))
}

/// `Ok` if `caller` may write `path`.
pub fn check_write(caller: &Caller, path: &str) -> Result<(), Status> {
    let Some(identity) = caller.identity() else {
        // No identity: a node without TLS (anyone may write), since with TLS the port
        // refuses callers without a certificate before they get here.
        return Ok(());
    };
    let allowed = match identity.role {
        Role::Operator | Role::Coord => true,
        Role::Master | Role::Gateway => owner(path) == Some(identity.role),
        _ => false,
    };
    if allowed {
        return Ok(());
    }
    let reason = match identity.role {
        Role::Master | Role::Gateway => {
            format!("it writes only paths under a {:?} segment (its own subtree)", identity.role.as_str())
        }
        _ => "it only reads".to_owned(),
    };
    Err(Status::permission_denied(format!("{identity} may not write {path}: {reason}")))
}

/// `Ok` if `caller` may make every write of `ops`.
pub fn check_ops<'a>(caller: &Caller, ops: impl IntoIterator<Item = &'a Op>) -> Result<(), Status> {
    for op in ops {
        match op {
            Op::Create { path, .. } | Op::Set { path, .. } | Op::Delete { path, .. } => check_write(caller, path)?,
            Op::Get { .. } => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use marina_daemon::tls::Identity;

    use super::*;

    fn as_role(role: Role) -> Caller {
        Caller::Verified(Identity::new(role, None))
    }

    #[test]
    fn each_role_writes_only_its_own_subtree() {
        let master = as_role(Role::Master);
        assert!(check_write(&master, "/marina/master/members/m-1").is_ok());
        assert!(check_write(&master, "/master/registry").is_ok(), "a cluster at the root");
        assert!(check_write(&master, "/marina/gateway/apps/x").is_err());
        assert!(check_write(&master, "/marina/gateway/master/x").is_err(), "the first role segment decides");
        assert!(check_write(&master, "/elsewhere").is_err());
        let gateway = as_role(Role::Gateway);
        assert!(check_write(&gateway, "/marina/gateway/apps/x").is_ok());
        assert!(check_write(&gateway, "/marina/master/members/x").is_err());
        let error = check_write(&as_role(Role::Agent), "/marina/agent/x").unwrap_err();
        assert_eq!(error.code(), tonic::Code::PermissionDenied);
        assert!(error.message().contains("only reads"), "{}", error.message());
        assert!(check_write(&as_role(Role::Operator), "/anything").is_ok());
        assert!(check_write(&Caller::Plaintext, "/anything").is_ok(), "a node without TLS");
    }
}
