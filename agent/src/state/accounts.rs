//! Looking up users and groups by name (NSS through libc, so LDAP/sssd users work too), for
//! `user`/`group` of file states and `runas` of `cmd.run`.

use std::ffi::{CStr, CString};

/// A resolved user: what `runas` needs to switch identity and set up the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// Size of the buffer handed to the reentrant NSS calls; grown on ERANGE.
const INITIAL_BUF: usize = 1024;

pub fn user_by_name(name: &str) -> Result<User, String> {
    let cname =
        CString::new(name).map_err(|_| format!("user name {name:?} contains a NUL byte"))?;
    let mut buf = vec![0 as libc::c_char; INITIAL_BUF];
    loop {
        // SAFETY: `pwd` and `buf` outlive the call; getpwnam_r writes only within `buf.len()`.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || out.is_null() {
            return Err(format!("user {name:?} does not exist on this host"));
        }
        // SAFETY: on success the string fields point into `buf`, NUL-terminated.
        let (home, shell) = unsafe { (cstr(pwd.pw_dir), cstr(pwd.pw_shell)) };
        return Ok(User {
            name: name.to_string(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home,
            shell,
        });
    }
}

pub fn group_by_name(name: &str) -> Result<u32, String> {
    let cname =
        CString::new(name).map_err(|_| format!("group name {name:?} contains a NUL byte"))?;
    let mut buf = vec![0 as libc::c_char; INITIAL_BUF];
    loop {
        // SAFETY: as in `user_by_name`.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || out.is_null() {
            return Err(format!("group {name:?} does not exist on this host"));
        }
        return Ok(grp.gr_gid);
    }
}

/// Every group the user belongs to (primary included), as `setgroups` wants them.
pub fn groups_of(user: &User) -> Vec<u32> {
    let Ok(cname) = CString::new(user.name.as_str()) else {
        return vec![user.gid];
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let mut count = n;
        // SAFETY: `groups` holds `count` entries; getgrouplist updates `count`.
        let rc = unsafe {
            libc::getgrouplist(cname.as_ptr(), user.gid, groups.as_mut_ptr(), &mut count)
        };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        if count <= n || n > 65536 {
            return vec![user.gid];
        }
        n = count;
    }
}

unsafe fn cstr(p: *const libc::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the caller passes a NUL-terminated string from a successful NSS call.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
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
