//! Looking up users and groups by name (NSS through libc, so LDAP/sssd users work too), for
//! `user`/`group` of file states and `runas` of `cmd.run`.

use std::ffi::CString;

use nix::unistd::{Gid, Group, User as NssUser, getgrouplist};

/// A resolved user: what `runas` needs to switch identity and set up the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

pub fn user_by_name(name: &str) -> Result<User, String> {
    match NssUser::from_name(name) {
        Ok(Some(u)) => Ok(User {
            name: name.to_string(),
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir.to_string_lossy().into_owned(),
            shell: u.shell.to_string_lossy().into_owned(),
        }),
        Ok(None) => Err(format!("user {name:?} does not exist on this host")),
        Err(e) => Err(format!("user {name:?} cannot be looked up: {e}")),
    }
}

pub fn group_by_name(name: &str) -> Result<u32, String> {
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("group {name:?} does not exist on this host")),
        Err(e) => Err(format!("group {name:?} cannot be looked up: {e}")),
    }
}

/// Every group the user belongs to (primary included), as `setgroups` wants them.
pub fn groups_of(user: &User) -> Vec<u32> {
    let Ok(cname) = CString::new(user.name.as_str()) else {
        return vec![user.gid];
    };
    getgrouplist(&cname, Gid::from_raw(user.gid))
        .map(|groups| groups.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_else(|_| vec![user.gid])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_and_unknown_names_say_so() {
        let root = user_by_name("root");
        assert_eq!(root.as_ref().map(|u| u.uid), Ok(0));
        assert_eq!(group_by_name("root"), Ok(0));
        let missing = user_by_name("no-such-user-corpus");
        assert!(missing.is_err_and(|e| e.contains("does not exist")));
        assert!(group_by_name("no-such-group-corpus").is_err());
    }
}
