//! Salt's `user` and `group` state modules through shadow-utils (`useradd`, `usermod`,
//! `userdel`, `groupadd`, `groupdel`, `gpasswd`): `user.present`, `user.absent`,
//! `group.present`, `group.absent`. Operator modules: they change the machine's accounts.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use corpus_states::Chunk;
use nix::unistd::{Gid, Group, User as NssUser};
use serde_json::{Map, Value, json};

use super::StateContext;
use super::accounts::{User, groups_of, user_by_name};
use super::args::Args;
use super::result::Outcome;

/// `user.present` arguments corpus refuses, with what to do instead.
const REFUSED_USER_ARGS: &[&str] = &[
    "expire",
    "mindays",
    "maxdays",
    "inactdays",
    "warndays",
    "roomnumber",
    "workphone",
    "homephone",
    "other",
    "loginclass",
    "hash_password",
    "empty_password",
    "nologinit",
    "unique",
];

fn refuse(chunk: &Chunk, refused: &[&str]) -> Result<(), String> {
    match refused
        .iter()
        .find(|arg| chunk.args.get(**arg).is_some_and(|v| !v.is_null()))
    {
        Some(arg) => Err(format!(
            "argument `{arg}` of {}.{} is not supported by corpus: set it with a cmd.run \
             (chage, chfn) that requires this state",
            chunk.module, chunk.function
        )),
        None => Ok(()),
    }
}

/// Runs a shadow-utils command; `Err` carries its error output.
fn run(program: &str, args: &[String]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!("cannot run {program}: {e} (user and group states need shadow-utils)")
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn group_name(gid: u32) -> Option<String> {
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}

fn group_exists(name: &str) -> bool {
    Group::from_name(name).ok().flatten().is_some()
}

/// A `gid` argument (a number or a group name) as a number.
fn resolve_gid(args: &Args, key: &str) -> Result<Option<u32>, String> {
    let Some(text) = args.string(key)? else {
        return Ok(None);
    };
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(Some(gid));
    }
    match Group::from_name(&text) {
        Ok(Some(g)) => Ok(Some(g.gid.as_raw())),
        _ => Err(format!("argument `{key}`: group {text:?} does not exist")),
    }
}

/// Supplementary groups of `user`, by name.
fn supplementary_groups(user: &User) -> BTreeSet<String> {
    groups_of(user)
        .into_iter()
        .filter(|gid| *gid != user.gid)
        .filter_map(group_name)
        .collect()
}

fn gecos(name: &str) -> String {
    NssUser::from_name(name)
        .ok()
        .flatten()
        .map(|u| {
            u.gecos
                .to_string_lossy()
                .split(',')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default()
}

/// The password hash in `/etc/shadow`, when readable.
fn shadow_hash(name: &str) -> Option<String> {
    let shadow = std::fs::read_to_string("/etc/shadow").ok()?;
    shadow.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name)).then(|| fields.next().unwrap_or_default().to_string())
    })
}

/// What `user.present` asks for.
struct WantedUser {
    uid: Option<u32>,
    gid: Option<u32>,
    home: Option<String>,
    shell: Option<String>,
    fullname: Option<String>,
    /// `groups` plus the `optional_groups` that exist; `None` when neither is given.
    groups: Option<BTreeSet<String>>,
    remove_groups: bool,
    password: Option<String>,
}

impl WantedUser {
    fn from_args(args: &Args) -> Result<WantedUser, String> {
        let mut groups: Option<BTreeSet<String>> = None;
        if args.raw("groups").is_some() {
            let listed: BTreeSet<String> = args.string_list("groups")?.into_iter().collect();
            let missing: Vec<&String> = listed.iter().filter(|g| !group_exists(g)).collect();
            if !missing.is_empty() {
                let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
                return Err(format!(
                    "The following group(s) are not present: {}",
                    names.join(",")
                ));
            }
            groups = Some(listed);
        }
        if args.raw("optional_groups").is_some() {
            let set = groups.get_or_insert_with(BTreeSet::new);
            set.extend(
                args.string_list("optional_groups")?
                    .into_iter()
                    .filter(|g| group_exists(g)),
            );
        }
        let uid = match args.string("uid")? {
            Some(text) => Some(
                text.parse::<u32>()
                    .map_err(|_| format!("argument `uid` must be a number, got {text:?}"))?,
            ),
            None => None,
        };
        Ok(WantedUser {
            uid,
            gid: resolve_gid(args, "gid")?,
            home: args.string("home")?,
            shell: args.string("shell")?,
            fullname: args.string("fullname")?,
            groups,
            remove_groups: args.bool("remove_groups", true)?,
            password: args.string("password")?,
        })
    }
}

fn user_info(name: &str) -> Value {
    match user_by_name(name) {
        Ok(user) => json!({
            "name": user.name,
            "uid": user.uid,
            "gid": user.gid,
            "home": user.home,
            "shell": user.shell,
            "fullname": gecos(name),
            "groups": supplementary_groups(&user).into_iter().collect::<Vec<_>>(),
        }),
        Err(_) => Value::Null,
    }
}

/// `user.present`: the account exists with the given attributes.
pub fn user_present(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    refuse(chunk, REFUSED_USER_ARGS)?;
    let args = Args(&chunk.args);
    let name = &chunk.name;
    let wanted = WantedUser::from_args(&args)?;
    let Ok(user) = user_by_name(name) else {
        return create_user(name, &args, &wanted, ctx);
    };
    let mut changes = Map::new();
    let mut usermod: Vec<String> = Vec::new();
    if let Some(uid) = wanted.uid.filter(|uid| *uid != user.uid) {
        if !args.bool("allow_uid_change", false)? {
            return Ok(Outcome::fail(format!(
                "Changing uid ({} -> {uid}) not permitted, set allow_uid_change to True to force this change. Note that this will not change file ownership.",
                user.uid
            )));
        }
        changes.insert("uid".into(), json!(uid));
        usermod.extend(["-u".into(), uid.to_string()]);
    }
    if let Some(gid) = wanted.gid.filter(|gid| *gid != user.gid) {
        if !args.bool("allow_gid_change", false)? {
            return Ok(Outcome::fail(format!(
                "Changing gid ({} -> {gid}) not permitted, set allow_gid_change to True to force this change. Note that this will not change file ownership.",
                user.gid
            )));
        }
        changes.insert("gid".into(), json!(gid));
        usermod.extend(["-g".into(), gid.to_string()]);
    }
    for (key, flag, have) in [
        ("home", "-d", user.home.clone()),
        ("shell", "-s", user.shell.clone()),
        ("fullname", "-c", gecos(name)),
    ] {
        let want = match key {
            "home" => &wanted.home,
            "shell" => &wanted.shell,
            _ => &wanted.fullname,
        };
        if let Some(want) = want.as_ref().filter(|w| **w != have) {
            changes.insert(key.into(), json!(want));
            usermod.extend([flag.into(), want.clone()]);
        }
    }
    if let Some(groups) = &wanted.groups {
        let have = supplementary_groups(&user);
        let target: BTreeSet<String> = if wanted.remove_groups {
            groups.clone()
        } else {
            have.union(groups).cloned().collect()
        };
        if target != have {
            changes.insert("groups".into(), json!(target));
            usermod.extend([
                "-G".into(),
                target.into_iter().collect::<Vec<_>>().join(","),
            ]);
        }
    }
    if let Some(hash) = &wanted.password
        && args.bool("enforce_password", true)?
        && shadow_hash(name).as_deref() != Some(hash.as_str())
    {
        // The hash itself stays out of the changes, as Salt prints it.
        changes.insert("passwd".into(), json!("XXX-REDACTED-XXX"));
        usermod.extend(["-p".into(), hash.clone()]);
    }
    if changes.is_empty() {
        return Ok(Outcome::ok(format!(
            "User {name} is present and up to date"
        )));
    }
    if ctx.test {
        let listed: Vec<String> = changes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        return Ok(Outcome::pending(format!(
            "The following user attributes are set to be changed:\n{}",
            listed.join("\n")
        )));
    }
    usermod.push(name.clone());
    run("usermod", &usermod)?;
    Ok(Outcome::changed(format!("Updated user {name}"), changes))
}

fn create_user(
    name: &str,
    args: &Args,
    wanted: &WantedUser,
    ctx: &StateContext,
) -> Result<Outcome, String> {
    if ctx.test {
        return Ok(Outcome::pending(format!("User {name} set to be added")));
    }
    let mut useradd: Vec<String> = Vec::new();
    if let Some(uid) = wanted.uid {
        useradd.extend(["-u".into(), uid.to_string()]);
    }
    if let Some(gid) = wanted.gid {
        useradd.extend(["-g".into(), gid.to_string()]);
    } else if args.bool("usergroup", true)? {
        useradd.push("-U".into());
    }
    if let Some(home) = &wanted.home {
        useradd.extend(["-d".into(), home.clone()]);
    }
    useradd.push(
        if args.bool("createhome", true)? {
            "-m"
        } else {
            "-M"
        }
        .into(),
    );
    if let Some(shell) = &wanted.shell {
        useradd.extend(["-s".into(), shell.clone()]);
    }
    if let Some(fullname) = &wanted.fullname {
        useradd.extend(["-c".into(), fullname.clone()]);
    }
    if let Some(groups) = wanted.groups.as_ref().filter(|g| !g.is_empty()) {
        useradd.extend([
            "-G".into(),
            groups.iter().cloned().collect::<Vec<_>>().join(","),
        ]);
    }
    if args.bool("system", false)? {
        useradd.push("-r".into());
    }
    if let Some(hash) = &wanted.password {
        useradd.extend(["-p".into(), hash.clone()]);
    }
    useradd.push(name.to_string());
    run("useradd", &useradd)?;
    let mut info = user_info(name);
    if wanted.password.is_some()
        && let Some(map) = info.as_object_mut()
    {
        map.insert("passwd".into(), json!("XXX-REDACTED-XXX"));
    }
    let changes = info.as_object().cloned().unwrap_or_default();
    Ok(Outcome::changed(
        format!("New user {name} created"),
        changes,
    ))
}

/// `user.absent`: the account is gone (`purge`: with its home; `force`: even while logged in).
pub fn user_absent(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let name = &chunk.name;
    if user_by_name(name).is_err() {
        return Ok(Outcome::ok(format!("User {name} is not present")));
    }
    let changes = Map::from_iter([(name.clone(), json!("removed"))]);
    if ctx.test {
        return Ok(Outcome::pending(format!("User {name} set for removal")));
    }
    let mut userdel: Vec<String> = Vec::new();
    if args.bool("purge", false)? {
        userdel.push("-r".into());
    }
    if args.bool("force", false)? {
        userdel.push("-f".into());
    }
    userdel.push(name.clone());
    run("userdel", &userdel)?;
    Ok(Outcome::changed(format!("Removed user {name}"), changes))
}

/// `group.present`: the group exists with `gid`, and `members` exactly (or `addusers` in and
/// `delusers` out).
pub fn group_present(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let name = &chunk.name;
    let gid = resolve_numeric_gid(&args)?;
    let members = args
        .raw("members")
        .map(|_| args.string_list("members"))
        .transpose()?;
    let addusers = args.string_list("addusers")?;
    let delusers = args.string_list("delusers")?;
    if members.is_some() && (!addusers.is_empty() || !delusers.is_empty()) {
        return Err("`members` cannot be combined with `addusers` or `delusers`".to_string());
    }
    let existing =
        Group::from_name(name).map_err(|e| format!("group {name:?} cannot be looked up: {e}"))?;
    let have: BTreeSet<String> = existing
        .as_ref()
        .map(|g| g.mem.iter().cloned().collect())
        .unwrap_or_default();
    let target: BTreeSet<String> = match &members {
        Some(list) => list.iter().cloned().collect(),
        None => have
            .iter()
            .cloned()
            .chain(addusers.iter().cloned())
            .filter(|u| !delusers.contains(u))
            .collect(),
    };
    let mut changes = Map::new();
    if existing.is_none() {
        if ctx.test {
            return Ok(Outcome::pending(format!("Group {name} set to be added")));
        }
        let mut groupadd: Vec<String> = Vec::new();
        if let Some(gid) = gid {
            groupadd.extend(["-g".into(), gid.to_string()]);
        }
        if args.bool("system", false)? {
            groupadd.push("-r".into());
        }
        groupadd.push(name.clone());
        run("groupadd", &groupadd)?;
        set_members(name, &target)?;
        let created = Group::from_name(name).ok().flatten();
        changes.insert("name".into(), json!(name));
        changes.insert("gid".into(), json!(created.map(|g| g.gid.as_raw()).or(gid)));
        changes.insert("passwd".into(), json!("x"));
        changes.insert("members".into(), json!(target));
        return Ok(Outcome::changed(
            format!("New group {name} created"),
            changes,
        ));
    }
    let current_gid = existing.as_ref().map(|g| g.gid.as_raw());
    if let Some(gid) = gid.filter(|g| Some(*g) != current_gid) {
        changes.insert("gid".into(), json!(gid));
    }
    if target != have {
        changes.insert("members".into(), json!(target));
    }
    if changes.is_empty() {
        return Ok(Outcome::ok(format!(
            "Group {name} is present and up to date"
        )));
    }
    if ctx.test {
        let listed: Vec<String> = changes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        return Ok(Outcome::pending(format!(
            "The following group attributes are set to be changed:\n{}",
            listed.join("\n")
        )));
    }
    if let Some(gid) = changes.get("gid").and_then(Value::as_u64) {
        run("groupmod", &["-g".into(), gid.to_string(), name.clone()])?;
    }
    if changes.contains_key("members") {
        set_members(name, &target)?;
    }
    Ok(Outcome::changed(format!("Updated group {name}"), changes))
}

fn resolve_numeric_gid(args: &Args) -> Result<Option<u32>, String> {
    match args.string("gid")? {
        Some(text) => text
            .parse::<u32>()
            .map(Some)
            .map_err(|_| format!("argument `gid` must be a number, got {text:?}")),
        None => Ok(None),
    }
}

fn set_members(name: &str, members: &BTreeSet<String>) -> Result<(), String> {
    let list = members.iter().cloned().collect::<Vec<_>>().join(",");
    run("gpasswd", &["-M".into(), list, name.to_string()])
}

/// `group.absent`: the group is gone.
pub fn group_absent(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let name = &chunk.name;
    if !group_exists(name) {
        return Ok(Outcome::ok("Group not present"));
    }
    let changes = Map::from_iter([(name.clone(), json!(""))]);
    if ctx.test {
        return Ok(Outcome::pending(format!("Group {name} is set for removal")));
    }
    run("groupdel", std::slice::from_ref(name))?;
    Ok(Outcome::changed(format!("Removed group {name}"), changes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::{FakeServices, chunk, ctx, sources};

    /// Account names and ids no real system uses; removed on drop, also when a test fails.
    struct Accounts {
        user: String,
        group: String,
        dir: tempfile::TempDir,
    }

    impl Accounts {
        fn new(tag: &str) -> Accounts {
            let suffix = format!("{tag}{:x}", std::process::id() % 0xffff);
            Accounts {
                user: format!("corpus-t-u{suffix}"),
                group: format!("corpus-t-g{suffix}"),
                dir: tempfile::tempdir().unwrap(),
            }
        }
    }

    impl Drop for Accounts {
        fn drop(&mut self) {
            let _ = Command::new("userdel")
                .args(["-r", "-f", &self.user])
                .output();
            let _ = Command::new("groupdel").arg(&self.user).output();
            let _ = Command::new("groupdel").arg(&self.group).output();
        }
    }

    fn apply(function: &str, name: &str, args: Value, test: bool) -> Outcome {
        let (src, svc) = (
            sources(std::path::Path::new("/"), Value::Null),
            FakeServices::default(),
        );
        let mut args = args;
        if let Some(map) = args.as_object_mut() {
            map.insert("name".into(), json!(name));
        }
        let c = chunk(function, "a", args);
        let ctx = ctx(test, &src, &svc);
        match function {
            "user.present" => user_present(&c, &ctx),
            "user.absent" => user_absent(&c, &ctx),
            "group.present" => group_present(&c, &ctx),
            "group.absent" => group_absent(&c, &ctx),
            other => panic!("no {other}"),
        }
        .unwrap_or_else(Outcome::fail)
    }

    #[test]
    fn users_and_groups_are_created_changed_and_removed_for_real() {
        let fx = Accounts::new("a");
        let (user, group) = (fx.user.clone(), fx.group.clone());
        let home = fx.dir.path().join("home").display().to_string();

        let would = apply("group.present", &group, json!({"gid": 59991}), true);
        assert_eq!(would.result, None);
        assert!(!group_exists(&group));
        let made = apply("group.present", &group, json!({"gid": 59991}), false);
        assert_eq!(made.comment, format!("New group {group} created"));
        assert_eq!(made.changes["gid"], json!(59991));
        let again = apply("group.present", &group, json!({"gid": 59991}), false);
        assert!(again.changes.is_empty(), "{}", again.comment);

        let spec = json!({"uid": 59990, "home": home, "shell": "/bin/sh", "groups": [group],
                          "fullname": "Corpus Test"});
        let made = apply("user.present", &user, spec.clone(), false);
        assert_eq!(made.result, Some(true), "{}", made.comment);
        assert_eq!(made.comment, format!("New user {user} created"));
        assert_eq!(made.changes["uid"], json!(59990));
        assert_eq!(made.changes["groups"], json!([group]));
        assert!(std::path::Path::new(&home).is_dir());
        let again = apply("user.present", &user, spec, false);
        assert_eq!(
            again.comment,
            format!("User {user} is present and up to date")
        );

        let shell = apply(
            "user.present",
            &user,
            json!({"shell": "/bin/bash", "groups": []}),
            false,
        );
        assert_eq!(
            shell.changes,
            json!({"shell": "/bin/bash", "groups": []})
                .as_object()
                .cloned()
                .unwrap()
        );
        assert_eq!(
            user_by_name(&user).map(|u| u.shell),
            Ok("/bin/bash".to_string())
        );
        let uid = apply("user.present", &user, json!({"uid": 59992}), false);
        assert_eq!(uid.result, Some(false));
        assert!(
            uid.comment
                .starts_with("Changing uid (59990 -> 59992) not permitted")
        );
        let uid = apply(
            "user.present",
            &user,
            json!({"uid": 59992, "allow_uid_change": true}),
            false,
        );
        assert_eq!(uid.changes["uid"], json!(59992), "{}", uid.comment);

        let members = apply("group.present", &group, json!({"members": [user]}), false);
        assert_eq!(
            members.changes["members"],
            json!([user]),
            "{}",
            members.comment
        );
        let removed = apply("group.present", &group, json!({"delusers": [user]}), false);
        assert_eq!(removed.changes["members"], json!([]), "{}", removed.comment);
        let refused = apply("user.present", &user, json!({"expire": 1}), false);
        assert!(
            refused
                .comment
                .starts_with("argument `expire` of user.present is not supported")
        );
        let missing = apply(
            "user.present",
            &user,
            json!({"groups": ["corpus-t-none"]}),
            false,
        );
        assert_eq!(
            missing.comment,
            "The following group(s) are not present: corpus-t-none"
        );

        assert_eq!(apply("user.absent", &user, json!({}), true).result, None);
        let gone = apply("user.absent", &user, json!({"purge": true}), false);
        assert_eq!(gone.changes[&user], json!("removed"), "{}", gone.comment);
        assert!(user_by_name(&user).is_err());
        assert!(!std::path::Path::new(&home).exists());
        assert_eq!(
            apply("user.absent", &user, json!({}), false).comment,
            format!("User {user} is not present")
        );
        let gone = apply("group.absent", &group, json!({}), false);
        assert_eq!(gone.comment, format!("Removed group {group}"));
        assert_eq!(
            apply("group.absent", &group, json!({}), false).comment,
            "Group not present"
        );
    }
}
