//! Salt's `file` state module: `managed`, `directory`, `symlink`, `absent`. Writes are atomic (a
//! temporary file in the target's directory, then a rename), so a reader never sees half a file.

use std::fs::{self, Metadata};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use corpus_states::Chunk;
use serde_json::{Map, Value, json};

use super::StateContext;
use super::accounts;
use super::args::{Args, format_mode, scalar_to_string};
use super::result::Outcome;

/// Salt's note appended to test-mode comments of file states.
pub(super) const TEST_NOTE: &str =
    "Note: No changes made, actual changes may be different due to other states.";

/// Desired ownership, resolved from names once per state.
struct Owner {
    uid: Option<(u32, String)>,
    gid: Option<(u32, String)>,
}

impl Owner {
    fn from_args(args: &Args) -> Result<Self, String> {
        let uid = match args.string("user")? {
            Some(name) => Some((accounts::user_by_name(&name)?.uid, name)),
            None => None,
        };
        let gid = match args.string("group")? {
            Some(name) => Some((accounts::group_by_name(&name)?, name)),
            None => None,
        };
        Ok(Self { uid, gid })
    }

    /// Changes needed on a file with metadata `meta` (`None`: a new file, owned by us).
    fn changes(&self, meta: Option<&Metadata>, changes: &mut Map<String, Value>) {
        // SAFETY: getuid/getgid cannot fail.
        let (cur_uid, cur_gid) = match meta {
            Some(m) => (m.uid(), m.gid()),
            None => unsafe { (libc::getuid(), libc::getgid()) },
        };
        if let Some((uid, name)) = &self.uid
            && *uid != cur_uid
        {
            changes.insert("user".into(), json!(name));
        }
        if let Some((gid, name)) = &self.gid
            && *gid != cur_gid
        {
            changes.insert("group".into(), json!(name));
        }
    }

    fn apply(&self, path: &Path, follow: bool) -> Result<(), String> {
        if self.uid.is_none() && self.gid.is_none() {
            return Ok(());
        }
        let (uid, gid) = (
            self.uid.as_ref().map(|u| u.0),
            self.gid.as_ref().map(|g| g.0),
        );
        let res = if follow {
            std::os::unix::fs::chown(path, uid, gid)
        } else {
            std::os::unix::fs::lchown(path, uid, gid)
        };
        res.map_err(|e| format!("cannot set owner of {}: {e}", path.display()))
    }
}

pub(super) fn absolute_path(name: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(name);
    if !path.is_absolute() {
        return Err(format!("Specified file {name} is not an absolute path"));
    }
    Ok(path)
}

fn lstat(path: &Path) -> Result<Option<Metadata>, String> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot stat {}: {e}", path.display())),
    }
}

/// Salt's `contents`: a string, a number, or a list of lines joined with newlines.
fn contents_text(value: &Value) -> Result<String, String> {
    match value {
        Value::Array(lines) => {
            let lines: Result<Vec<String>, String> = lines
                .iter()
                .map(|l| {
                    scalar_to_string(l)
                        .ok_or_else(|| format!("`contents` lines must be text, got {l}"))
                })
                .collect();
            Ok(lines?.join("\n"))
        }
        v => {
            scalar_to_string(v).ok_or_else(|| format!("`contents` must be text or a list, got {v}"))
        }
    }
}

/// The extra template context of a state: `defaults` overlaid with `context`, like Salt.
fn template_context(args: &Args) -> Map<String, Value> {
    let mut extra = Map::new();
    for key in ["defaults", "context"] {
        if let Some(Value::Object(m)) = args.raw(key) {
            extra.extend(m.clone());
        }
    }
    extra
}

/// The content a `file.managed` state wants, or `None` when it manages no content.
fn desired_content(
    chunk: &Chunk,
    args: &Args,
    ctx: &StateContext,
) -> Result<Option<Vec<u8>>, String> {
    let template = args.string("template")?;
    match template.as_deref() {
        None | Some("jinja") => {}
        Some(other) => {
            return Err(format!(
                "template {other:?} is not supported: corpus renders jinja only"
            ));
        }
    }
    let render = |name: &str, text: &str| -> Result<String, String> {
        if template.is_some() {
            let mut extra = template_context(args);
            if let Some(accumulator) = ctx.accumulators.for_file(&chunk.name) {
                extra.insert("accumulator".into(), Value::Object(accumulator));
            }
            ctx.sources.render_jinja(name, text, &extra)
        } else {
            Ok(text.to_string())
        }
    };
    let given: Vec<&str> = ["contents", "contents_pillar", "contents_grains"]
        .into_iter()
        .filter(|key| args.raw(key).is_some())
        .collect();
    if given.len() > 1 {
        return Err(
            "Only one of 'contents', 'contents_pillar', and 'contents_grains' is permitted"
                .to_string(),
        );
    }
    if let Some(data_key) = given.first().filter(|key| **key != "contents") {
        if args.raw("source").is_some() {
            return Err(format!("`source` and `{data_key}` are mutually exclusive"));
        }
        let mut text = lookup_contents(chunk, args, ctx, data_key)?;
        if args.bool("contents_newline", true)? && !text.ends_with('\n') {
            text.push('\n');
        }
        return Ok(Some(text.into_bytes()));
    }
    if let Some(contents) = args.raw("contents") {
        if args.raw("source").is_some() {
            return Err("`source` and `contents` are mutually exclusive".to_string());
        }
        let mut text = render(
            &format!("contents of {}", chunk.id),
            &contents_text(contents)?,
        )?;
        if args.bool("contents_newline", true)? && !text.ends_with('\n') {
            text.push('\n');
        }
        return Ok(Some(text.into_bytes()));
    }
    let sources = args.string_list("source")?;
    if sources.is_empty() {
        return Ok(None);
    }
    for source in &sources {
        if let Some(bytes) = ctx.sources.read(source)? {
            if template.is_none() {
                return Ok(Some(bytes));
            }
            let text = String::from_utf8(bytes)
                .map_err(|_| format!("template {source} is not UTF-8 text"))?;
            return render(source, &text).map(|t| Some(t.into_bytes()));
        }
    }
    Err(format!("Source file {} not found", sources.join(", ")))
}

/// Looks a template value up for `contents_pillar` / `contents_grains` (a `a:b:c` path): a
/// string as is, a list one item a line, as Salt writes them. A missing key fails naming it.
fn lookup_contents(
    chunk: &Chunk,
    args: &Args,
    ctx: &StateContext,
    data_key: &str,
) -> Result<String, String> {
    let path = args
        .string(data_key)?
        .ok_or_else(|| format!("argument `{data_key}` must name a key"))?;
    let source = if data_key == "contents_pillar" {
        "pillar"
    } else {
        "grains"
    };
    // The lookup goes through the state's template context, so it sees the same pillar and
    // grains as `{{ salt['pillar.get'](...) }}` would.
    let template = format!(
        "{{%- set v = salt['{source}.get'](__corpus_key, none) -%}}\
         {{%- if v is none -%}}{MISSING}\
         {{%- elif v is mapping -%}}{MAPPING}\
         {{%- elif v is string -%}}{{{{ v }}}}\
         {{%- elif v is sequence -%}}{{{{ v|join('\\n') }}}}\
         {{%- else -%}}{{{{ v }}}}{{%- endif -%}}"
    );
    let extra = Map::from_iter([("__corpus_key".to_string(), json!(path))]);
    let text =
        ctx.sources
            .render_jinja(&format!("{data_key} of {}", chunk.id), &template, &extra)?;
    match text.as_str() {
        MISSING => Err(format!(
            "{source} key {path:?} (from `{data_key}`) does not exist"
        )),
        MAPPING => Err(format!(
            "{source} key {path:?} (from `{data_key}`) is a mapping: point it at a string or a list"
        )),
        _ => Ok(text),
    }
}

/// What the `contents_pillar` lookup template prints for a missing key and for a mapping:
/// NUL-led, so no pillar string is mistaken for them.
const MISSING: &str = "\u{0}missing";
const MAPPING: &str = "\u{0}mapping";

pub(super) fn unified_diff(old: &[u8], new: &[u8]) -> String {
    let is_text = |b: &[u8]| !b.contains(&0) && std::str::from_utf8(b).is_ok();
    if !is_text(old) || !is_text(new) {
        return "Replace binary file".to_string();
    }
    let (old, new) = (String::from_utf8_lossy(old), String::from_utf8_lossy(new));
    similar::TextDiff::from_lines(old.as_ref(), new.as_ref())
        .unified_diff()
        .context_radius(3)
        .header("", "")
        .to_string()
}

/// Salt's directory mode for `makedirs` when no `dir_mode` is given: the file's mode with an
/// execute bit added wherever it has a read bit (0640 -> 0750).
fn dir_mode_for(file_mode: u32) -> u32 {
    let mut mode = file_mode & 0o777;
    for (read, exec) in [(0o400, 0o100), (0o040, 0o010), (0o004, 0o001)] {
        if mode & read != 0 {
            mode |= exec;
        }
    }
    mode
}

/// Makes sure the parent of `path` exists: with `makedirs`, creates the missing ancestors
/// (with `dir_mode`, or the umask's default); without it, fails with `missing`.
pub(super) fn ensure_parent(
    path: &Path,
    makedirs: bool,
    dir_mode: Option<u32>,
    missing: &str,
) -> Result<(), String> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    if parent.is_dir() {
        return Ok(());
    }
    if !makedirs {
        return Err(missing.to_string());
    }
    let mut to_create: Vec<&Path> = parent.ancestors().take_while(|p| !p.is_dir()).collect();
    to_create.reverse();
    for dir in to_create {
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => continue,
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
        if let Some(mode) = dir_mode {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                .map_err(|e| format!("cannot set mode of {}: {e}", dir.display()))?;
        }
    }
    Ok(())
}

/// This process's umask, read once from /proc (reading it with umask(2) would race other
/// threads); `None` when /proc is not there.
fn process_umask() -> Option<u32> {
    static UMASK: OnceLock<Option<u32>> = OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

/// Writes `content` to `path` through a temporary file in the same directory and a rename.
pub(super) fn write_atomically(
    path: &Path,
    content: &[u8],
    mode: Option<u32>,
    keep_owner: Option<(u32, u32)>,
) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".corpus-").suffix(".tmp");
    // Without a mode, a new file gets 0666 minus the umask, like `open(2)` would give it. With
    // one the umask does not touch, create it with that mode and save a chmod per file.
    let exact = mode.filter(|m| m & !0o777 == 0 && process_umask().is_some_and(|u| m & u == 0));
    builder.permissions(fs::Permissions::from_mode(exact.unwrap_or(0o666)));
    let mut tmp = builder
        .tempfile_in(dir)
        .map_err(|e| format!("cannot create a temporary file in {}: {e}", dir.display()))?;
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    tmp.write_all(content).map_err(err)?;
    if let Some(mode) = mode
        && exact.is_none()
    {
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(err)?;
    }
    if let Some((uid, gid)) = keep_owner {
        // Replacing a file keeps its owner, as Salt's copy-over does; only root can, and a
        // non-root agent can only have written a file it owns anyway.
        let _ = std::os::unix::fs::fchown(tmp.as_file(), Some(uid), Some(gid));
    }
    tmp.persist(path)
        .map_err(|e| format!("cannot replace {}: {}", path.display(), e.error))?;
    Ok(())
}

/// `file.managed`: the file exists with the given content, mode and owner.
pub fn managed(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let name = &chunk.name;
    let mut path = absolute_path(name)?;
    let mode = args.mode("mode")?;
    let owner = Owner::from_args(&args)?;
    let replace = args.bool("replace", true)?;
    let makedirs = args.bool("makedirs", false)?;
    let show_changes = args.bool("show_changes", true)?;

    let mut meta = lstat(&path)?;
    if meta.as_ref().is_some_and(|m| m.file_type().is_symlink()) {
        // Salt follows symlinks (follow_symlinks=True): manage the file the link points to.
        if let Ok(target) = fs::canonicalize(&path) {
            path = target;
        }
        meta = lstat(&path)?;
    }
    if meta.as_ref().is_some_and(|m| m.is_dir()) {
        return Ok(Outcome::fail(format!(
            "Specified target {name} is a directory"
        )));
    }
    if meta.is_none() && !args.bool("create", true)? {
        return Ok(Outcome::ok(format!(
            "File {name} is not present and is not set for creation"
        )));
    }
    let content = if meta.is_some() && !replace {
        None
    } else {
        desired_content(chunk, &args, ctx)?
    };

    let mut changes = Map::new();
    let mut write: Option<Vec<u8>> = None;
    match &meta {
        None => {
            changes.insert("diff".into(), json!("New file"));
            write = Some(content.unwrap_or_default());
            if let Some(mode) = mode {
                changes.insert("mode".into(), json!(format_mode(mode)));
            }
        }
        Some(m) => {
            if let Some(new) = content {
                let old = fs::read(&path).map_err(|e| format!("cannot read {name}: {e}"))?;
                if old != new {
                    let diff = if show_changes {
                        unified_diff(&old, &new)
                    } else {
                        "<show_changes=False>".into()
                    };
                    changes.insert("diff".into(), json!(diff));
                    write = Some(new);
                }
            }
            if let Some(mode) = mode
                && m.permissions().mode() & 0o7777 != mode
            {
                changes.insert("mode".into(), json!(format_mode(mode)));
            }
        }
    }
    owner.changes(meta.as_ref(), &mut changes);

    if changes.is_empty() {
        return Ok(Outcome::ok(format!("File {name} is in the correct state")));
    }
    if ctx.test {
        if meta.is_none() {
            changes = Map::from_iter([("newfile".to_string(), json!(name))]);
        }
        return Ok(Outcome::would_change(
            format!("The file {name} is set to be changed\n{TEST_NOTE}"),
            changes,
        ));
    }

    let dir_mode = match args.mode("dir_mode")? {
        Some(m) => Some(m),
        None => mode.map(dir_mode_for),
    };
    ensure_parent(&path, makedirs, dir_mode, "Parent directory not present")?;
    match write {
        Some(bytes) => {
            let keep_mode = mode.or_else(|| meta.as_ref().map(|m| m.permissions().mode() & 0o7777));
            let keep_owner = meta.as_ref().map(|m| (m.uid(), m.gid()));
            write_atomically(&path, &bytes, keep_mode, keep_owner)?;
        }
        None => {
            if let Some(mode) = mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("cannot set mode of {name}: {e}"))?;
            }
        }
    }
    owner.apply(&path, true)?;
    Ok(Outcome::changed(format!("File {name} updated"), changes))
}

/// `file.directory`: the directory exists with the given mode and owner.
pub fn directory(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let name = &chunk.name;
    let path = absolute_path(name)?;
    // Salt's file.directory calls it `dir_mode`; `mode` is its alias.
    let mode = match args.mode("dir_mode")? {
        Some(m) => Some(m),
        None => args.mode("mode")?,
    };
    let owner = Owner::from_args(&args)?;
    let makedirs = args.bool("makedirs", false)?;

    let meta = match fs::metadata(&path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if lstat(&path)?.is_some() {
                return Ok(Outcome::fail(format!(
                    "Specified location {name} is a dangling symlink"
                )));
            }
            None
        }
        Err(e) => return Err(format!("cannot stat {name}: {e}")),
    };
    if meta.as_ref().is_some_and(|m| !m.is_dir()) {
        return Ok(Outcome::fail(format!(
            "Specified location {name} exists and is a file"
        )));
    }
    let mut changes = Map::new();
    if meta.is_none() {
        changes.insert(name.clone(), json!("New Dir"));
    }
    if let Some(mode) = mode
        && meta
            .as_ref()
            .is_none_or(|m| m.permissions().mode() & 0o7777 != mode)
    {
        changes.insert("mode".into(), json!(format_mode(mode)));
    }
    owner.changes(meta.as_ref(), &mut changes);

    if changes.is_empty() {
        return Ok(Outcome::ok(format!(
            "The directory {name} is in the correct state"
        )));
    }
    if ctx.test {
        let what = if meta.is_none() {
            "directory - new"
        } else {
            "directory - changed"
        };
        return Ok(Outcome::would_change(
            format!("The following files will be changed:\n{name}: {what}\n"),
            changes,
        ));
    }
    if meta.is_none() {
        ensure_parent(
            &path,
            makedirs,
            mode,
            &format!("No directory to create {name} in"),
        )?;
        fs::create_dir(&path).map_err(|e| format!("cannot create directory {name}: {e}"))?;
    }
    if let Some(mode) = mode {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set mode of {name}: {e}"))?;
    }
    owner.apply(&path, true)?;
    Ok(Outcome::changed(
        format!("Directory {name} updated"),
        changes,
    ))
}

/// `file.symlink`: `name` is a symlink to `target`.
pub fn symlink(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let name = &chunk.name;
    let path = absolute_path(name)?;
    let target = args
        .string("target")?
        .ok_or_else(|| format!("file.symlink {name} needs a `target`"))?;
    let force = args.bool("force", false)?;
    let makedirs = args.bool("makedirs", false)?;
    let owner = Owner::from_args(&args)?;

    let meta = lstat(&path)?;
    let mut changes = Map::new();
    let comment;
    match &meta {
        Some(m) if m.file_type().is_symlink() => {
            let current =
                fs::read_link(&path).map_err(|e| format!("cannot read link {name}: {e}"))?;
            if current == Path::new(&target) {
                owner.changes(Some(m), &mut changes);
                if changes.is_empty() {
                    return Ok(Outcome::ok(format!("Symlink {name} is present")));
                }
                comment = format!("Set ownership of symlink {name}");
            } else {
                changes.insert("change".into(), json!(name));
                comment = format!("Set symlink {name} -> {target}");
            }
        }
        Some(m) => {
            let kind = if m.is_dir() { "Directory" } else { "File" };
            if !force {
                return Ok(Outcome::fail(format!(
                    "{kind} exists where the symlink {name} should be (set force: True to replace it)"
                )));
            }
            changes.insert("forced".into(), json!("Symlink was forcibly replaced"));
            changes.insert("new".into(), json!(name));
            comment = format!("Created new symlink {name} -> {target}");
        }
        None => {
            changes.insert("new".into(), json!(name));
            comment = format!("Created new symlink {name} -> {target}");
        }
    }
    if ctx.test {
        return Ok(Outcome::would_change(
            format!("Symlink {name} to {target} is set for creation"),
            changes,
        ));
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    ensure_parent(
        &path,
        makedirs,
        None,
        &format!("Directory {} for symlink is not present", parent.display()),
    )?;
    if let Some(m) = &meta
        && m.is_dir()
    {
        fs::remove_dir_all(&path).map_err(|e| format!("cannot remove {name}: {e}"))?;
    }
    let relink = changes.contains_key("new") || changes.contains_key("change");
    if relink {
        // Create the link under a temporary name and rename it over, so `name` never vanishes.
        let tmp = parent.join(format!(
            ".corpus-link-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::os::unix::fs::symlink(&target, &tmp)
            .map_err(|e| format!("cannot create symlink {name}: {e}"))?;
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(format!("cannot create symlink {name}: {e}"));
        }
    }
    owner.apply(&path, false)?;
    Ok(Outcome::changed(comment, changes))
}

/// `file.absent`: nothing exists at `name`.
pub fn absent(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let name = &chunk.name;
    let path = absolute_path(name)?;
    if path.parent().is_none() {
        return Ok(Outcome::fail(format!("Refusing to make \"{name}\" absent")));
    }
    let Some(meta) = lstat(&path)? else {
        return Ok(Outcome::ok(format!("File {name} is not present")));
    };
    let changes = Map::from_iter([("removed".to_string(), json!(name))]);
    let is_dir = meta.is_dir();
    let kind = if is_dir { "Directory" } else { "File" };
    if ctx.test {
        return Ok(Outcome::would_change(
            format!("{kind} {name} is set for removal"),
            changes,
        ));
    }
    let res = if is_dir {
        fs::remove_dir_all(&path)
    } else {
        fs::remove_file(&path)
    };
    res.map_err(|e| format!("cannot remove {name}: {e}"))?;
    Ok(Outcome::changed(
        format!("Removed {} {name}", kind.to_lowercase()),
        changes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LocalFileSources;
    use crate::state::testing::{FakeServices, chunk, ctx, sources};
    use serde_json::json;

    struct Fixture {
        dir: tempfile::TempDir,
        sources: LocalFileSources,
        services: FakeServices,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let sources = sources(dir.path(), json!({"app": {"port": 8080, "name": "shop"}}));
            Self {
                dir,
                sources,
                services: FakeServices::default(),
            }
        }
        fn path(&self, rel: &str) -> String {
            self.dir.path().join(rel).display().to_string()
        }
        fn run(
            &self,
            f: fn(&Chunk, &StateContext) -> Result<Outcome, String>,
            test: bool,
            c: &Chunk,
        ) -> Outcome {
            f(c, &ctx(test, &self.sources, &self.services)).unwrap_or_else(Outcome::fail)
        }
    }

    fn mode_of(path: &str) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn managed_creates_the_file_then_reports_no_changes() {
        let fx = Fixture::new();
        let name = fx.path("motd");
        let c = chunk(
            "file.managed",
            "motd",
            json!({"name": name, "contents": "hello", "mode": "0640"}),
        );
        let first = fx.run(managed, false, &c);
        assert_eq!(first.result, Some(true), "{}", first.comment);
        assert_eq!(
            first.changes,
            json!({"diff": "New file", "mode": "0640"})
                .as_object()
                .cloned()
                .unwrap()
        );
        assert_eq!(first.comment, format!("File {name} updated"));
        assert_eq!(fs::read_to_string(&name).unwrap(), "hello\n");
        assert_eq!(mode_of(&name), 0o640);
        let again = fx.run(managed, false, &c);
        assert_eq!(
            again,
            Outcome::ok(format!("File {name} is in the correct state"))
        );
    }

    #[test]
    fn managed_sets_exact_modes_whatever_the_umask() {
        let fx = Fixture::new();
        for (i, mode) in [0o777u32, 0o600, 0o4755, 0o644].into_iter().enumerate() {
            let name = fx.path(&format!("m{i}"));
            let c = chunk(
                "file.managed",
                "m",
                json!({"name": name, "contents": "x", "mode": format!("{mode:o}")}),
            );
            assert_eq!(fx.run(managed, false, &c).result, Some(true));
            assert_eq!(mode_of(&name), mode, "{name}");
        }
    }

    #[test]
    fn managed_joins_a_contents_list_with_newlines() {
        let fx = Fixture::new();
        let name = fx.path("lines");
        let c = chunk(
            "file.managed",
            "l",
            json!({"name": name, "contents": ["a", "b", 3]}),
        );
        assert_eq!(fx.run(managed, false, &c).result, Some(true));
        assert_eq!(fs::read_to_string(&name).unwrap(), "a\nb\n3\n");
        let raw = chunk(
            "file.managed",
            "l",
            json!({"name": name, "contents": "x", "contents_newline": false}),
        );
        fx.run(managed, false, &raw);
        assert_eq!(fs::read_to_string(&name).unwrap(), "x");
    }

    #[test]
    fn managed_reports_a_unified_diff_and_keeps_the_existing_mode() {
        let fx = Fixture::new();
        let name = fx.path("conf");
        fs::write(&name, "one\ntwo\nthree\n").unwrap();
        fs::set_permissions(&name, fs::Permissions::from_mode(0o600)).unwrap();
        let c = chunk(
            "file.managed",
            "conf",
            json!({"name": name, "contents": "one\n2\nthree"}),
        );
        let out = fx.run(managed, false, &c);
        assert_eq!(out.result, Some(true));
        assert_eq!(
            out.changes["diff"],
            json!("--- \n+++ \n@@ -1,3 +1,3 @@\n one\n-two\n+2\n three\n")
        );
        assert_eq!(fs::read_to_string(&name).unwrap(), "one\n2\nthree\n");
        assert_eq!(mode_of(&name), 0o600);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(fx.dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn managed_renders_a_jinja_source_from_the_file_root() {
        let fx = Fixture::new();
        fs::create_dir(fx.path("app")).unwrap();
        fs::write(
            fx.path("app/app.conf.j2"),
            "name={{ pillar.app.name }} port={{ pillar.app.port }} x={{ extra }}\n",
        )
        .unwrap();
        let name = fx.path("app.conf");
        let c = chunk(
            "file.managed",
            "conf",
            json!({"name": name, "source": "salt://app/app.conf.j2", "template": "jinja",
                   "defaults": {"extra": 1}, "context": {"extra": 2}}),
        );
        let out = fx.run(managed, false, &c);
        assert_eq!(out.result, Some(true), "{}", out.comment);
        assert_eq!(
            fs::read_to_string(&name).unwrap(),
            "name=shop port=8080 x=2\n"
        );
        // Without `template`, the source is copied verbatim; a source list takes the first found.
        let raw = chunk(
            "file.managed",
            "conf",
            json!({"name": name, "source": ["salt://nope", "salt://app/app.conf.j2"]}),
        );
        fx.run(managed, false, &raw);
        assert!(fs::read_to_string(&name).unwrap().starts_with("name={{"));
    }

    #[test]
    fn managed_fails_on_missing_source_escaping_source_and_relative_name() {
        let fx = Fixture::new();
        let missing = chunk(
            "file.managed",
            "m",
            json!({"name": fx.path("m"), "source": "salt://missing.txt"}),
        );
        let out = fx.run(managed, false, &missing);
        assert_eq!(out.result, Some(false));
        assert_eq!(out.comment, "Source file salt://missing.txt not found");
        let escape = chunk(
            "file.managed",
            "e",
            json!({"name": fx.path("e"), "source": "salt://../etc/passwd"}),
        );
        assert!(
            fx.run(managed, false, &escape)
                .comment
                .contains("inside the file root")
        );
        let relative = chunk(
            "file.managed",
            "r",
            json!({"name": "etc/motd", "contents": "x"}),
        );
        assert_eq!(
            fx.run(managed, false, &relative).comment,
            "Specified file etc/motd is not an absolute path"
        );
        let bad_template = chunk(
            "file.managed",
            "t",
            json!({"name": fx.path("t"), "contents": "{{ nope.x }}", "template": "jinja"}),
        );
        let out = fx.run(managed, false, &bad_template);
        assert_eq!(out.result, Some(false));
        assert!(out.comment.contains("cannot render"), "{}", out.comment);
        assert!(!Path::new(&fx.path("t")).exists());
    }

    #[test]
    fn managed_needs_makedirs_for_a_missing_parent() {
        let fx = Fixture::new();
        let name = fx.path("a/b/c.txt");
        let c = chunk("file.managed", "c", json!({"name": name, "contents": "x"}));
        assert_eq!(
            fx.run(managed, false, &c),
            Outcome::fail("Parent directory not present")
        );
        let c = chunk(
            "file.managed",
            "c",
            json!({"name": name, "contents": "x", "makedirs": true}),
        );
        assert_eq!(fx.run(managed, false, &c).result, Some(true));
        assert!(Path::new(&name).is_file());
    }

    #[test]
    fn managed_in_test_mode_writes_nothing_and_says_what_would_change() {
        let fx = Fixture::new();
        let name = fx.path("new");
        let c = chunk("file.managed", "n", json!({"name": name, "contents": "x"}));
        let out = fx.run(managed, true, &c);
        assert_eq!(out.result, None);
        assert_eq!(
            out.changes,
            json!({"newfile": name}).as_object().cloned().unwrap()
        );
        assert!(
            out.comment
                .starts_with(&format!("The file {name} is set to be changed"))
        );
        assert!(!Path::new(&name).exists());
        fs::write(&name, "y\n").unwrap();
        let out = fx.run(managed, true, &c);
        assert_eq!(out.result, None);
        assert_eq!(
            out.changes["diff"],
            json!("--- \n+++ \n@@ -1 +1 @@\n-y\n+x\n")
        );
        assert_eq!(fs::read_to_string(&name).unwrap(), "y\n");
        fs::write(&name, "x\n").unwrap();
        assert_eq!(fx.run(managed, true, &c).result, Some(true));
    }

    #[test]
    fn managed_writes_contents_pillar_and_contents_grains_and_refuses_missing_keys() {
        let fx = Fixture::new();
        let tree = std::sync::Arc::new(corpus_pillar::MemoryTree::new());
        let context = corpus_pillar::TemplateContext::new(
            json!({"app": {"key": "secret-line", "lines": ["a", "b"], "map": {"x": 1}}}),
            json!({"id": "web1"}),
            json!({}),
            json!("base"),
        );
        let src = LocalFileSources::new(None, Some(crate::state::file_renderer(tree, context)));
        let svc = FakeServices::default();
        let apply = |args: Value| {
            let c = chunk("file.managed", "p", args);
            managed(&c, &ctx(false, &src, &svc)).unwrap_or_else(Outcome::fail)
        };
        let name = fx.path("from-pillar");
        let out = apply(json!({"name": name, "contents_pillar": "app:key"}));
        assert_eq!(out.result, Some(true), "{}", out.comment);
        assert_eq!(fs::read_to_string(&name).unwrap(), "secret-line\n");
        apply(json!({"name": name, "contents_pillar": "app:lines"}));
        assert_eq!(fs::read_to_string(&name).unwrap(), "a\nb\n");
        apply(json!({"name": name, "contents_grains": "id", "contents_newline": false}));
        assert_eq!(fs::read_to_string(&name).unwrap(), "web1");
        let missing = apply(json!({"name": fx.path("none"), "contents_pillar": "app:nope"}));
        assert_eq!(missing.result, Some(false));
        assert!(
            missing.comment.contains("\"app:nope\""),
            "{}",
            missing.comment
        );
        assert!(!Path::new(&fx.path("none")).exists());
        let mapping = apply(json!({"name": fx.path("m"), "contents_pillar": "app:map"}));
        assert!(
            mapping.comment.contains("is a mapping"),
            "{}",
            mapping.comment
        );
        let both = apply(json!({"name": name, "contents": "x", "contents_pillar": "app:key"}));
        assert!(both.comment.starts_with("Only one of"), "{}", both.comment);
    }

    #[test]
    fn managed_with_create_false_leaves_a_missing_file_missing() {
        let fx = Fixture::new();
        let name = fx.path("absent");
        let c = chunk(
            "file.managed",
            "k",
            json!({"name": name, "contents": "x", "create": false}),
        );
        let out = fx.run(managed, false, &c);
        assert_eq!(out.result, Some(true));
        assert!(out.changes.is_empty());
        assert!(out.comment.ends_with("is not set for creation"));
        assert!(!Path::new(&name).exists());
        fs::write(&name, "old\n").unwrap();
        fx.run(managed, false, &c);
        assert_eq!(fs::read_to_string(&name).unwrap(), "x\n");
    }

    #[test]
    fn managed_with_replace_false_leaves_existing_content() {
        let fx = Fixture::new();
        let name = fx.path("keep");
        fs::write(&name, "mine\n").unwrap();
        let c = chunk(
            "file.managed",
            "k",
            json!({"name": name, "contents": "theirs", "replace": false, "mode": 600}),
        );
        let out = fx.run(managed, false, &c);
        assert_eq!(
            out.changes,
            json!({"mode": "0600"}).as_object().cloned().unwrap()
        );
        assert_eq!(fs::read_to_string(&name).unwrap(), "mine\n");
        assert_eq!(mode_of(&name), 0o600);
    }

    #[test]
    fn managed_sets_owner_and_group() {
        let fx = Fixture::new();
        let nobody = accounts::user_by_name("nobody")
            .expect("the test needs the system user nobody (every Debian system has it)");
        let name = fx.path("owned");
        let c = chunk(
            "file.managed",
            "o",
            json!({"name": name, "contents": "x", "user": "nobody", "group": "root"}),
        );
        let out = fx.run(managed, false, &c);
        assert_eq!(out.result, Some(true), "{}", out.comment);
        assert_eq!(out.changes.get("user"), Some(&json!("nobody")));
        assert_eq!(fs::metadata(&name).unwrap().uid(), nobody.uid);
        assert_eq!(fx.run(managed, false, &c).changes, Map::new());
        let bad = chunk(
            "file.managed",
            "o",
            json!({"name": name, "contents": "x", "user": "no-such-user-corpus"}),
        );
        assert!(
            fx.run(managed, false, &bad)
                .comment
                .contains("does not exist")
        );
    }

    #[test]
    fn managed_refuses_a_directory_and_writes_through_a_symlink() {
        let fx = Fixture::new();
        fs::create_dir(fx.path("d")).unwrap();
        let c = chunk(
            "file.managed",
            "d",
            json!({"name": fx.path("d"), "contents": "x"}),
        );
        assert_eq!(fx.run(managed, false, &c).result, Some(false));
        fs::write(fx.path("real"), "old\n").unwrap();
        std::os::unix::fs::symlink(fx.path("real"), fx.path("link")).unwrap();
        let c = chunk(
            "file.managed",
            "l",
            json!({"name": fx.path("link"), "contents": "new"}),
        );
        assert_eq!(fx.run(managed, false, &c).result, Some(true));
        assert_eq!(fs::read_to_string(fx.path("real")).unwrap(), "new\n");
        assert!(
            fs::symlink_metadata(fx.path("link"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn directory_is_created_with_its_mode_once() {
        let fx = Fixture::new();
        let name = fx.path("srv/data");
        let c = chunk("file.directory", "d", json!({"name": name, "mode": 750}));
        assert_eq!(
            fx.run(directory, false, &c),
            Outcome::fail(format!("No directory to create {name} in"))
        );
        let c = chunk(
            "file.directory",
            "d",
            json!({"name": name, "mode": 750, "makedirs": true}),
        );
        let t = fx.run(directory, true, &c);
        assert_eq!(t.result, None);
        assert!(!Path::new(&name).exists());
        let out = fx.run(directory, false, &c);
        assert_eq!(
            out.changes,
            json!({name.clone(): "New Dir", "mode": "0750"})
                .as_object()
                .cloned()
                .unwrap()
        );
        assert_eq!(mode_of(&name), 0o750);
        assert_eq!(
            fx.run(directory, false, &c),
            Outcome::ok(format!("The directory {name} is in the correct state"))
        );
        fs::set_permissions(&name, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            fx.run(directory, false, &c).changes,
            json!({"mode": "0750"}).as_object().cloned().unwrap()
        );
        let file = fx.path("f");
        fs::write(&file, "").unwrap();
        let c = chunk("file.directory", "f", json!({"name": file}));
        assert_eq!(
            fx.run(directory, false, &c),
            Outcome::fail(format!("Specified location {file} exists and is a file"))
        );
    }

    #[test]
    fn symlink_is_created_retargeted_and_forced() {
        let fx = Fixture::new();
        let name = fx.path("current");
        let c = chunk(
            "file.symlink",
            "s",
            json!({"name": name, "target": "/tmp/a"}),
        );
        assert_eq!(fx.run(symlink, true, &c).result, None);
        assert!(fs::symlink_metadata(&name).is_err());
        let out = fx.run(symlink, false, &c);
        assert_eq!(
            out.changes,
            json!({"new": name}).as_object().cloned().unwrap()
        );
        assert_eq!(fs::read_link(&name).unwrap(), Path::new("/tmp/a"));
        assert_eq!(
            fx.run(symlink, false, &c),
            Outcome::ok(format!("Symlink {name} is present"))
        );
        let c2 = chunk(
            "file.symlink",
            "s",
            json!({"name": name, "target": "/tmp/b"}),
        );
        assert_eq!(
            fx.run(symlink, false, &c2).changes,
            json!({"change": name}).as_object().cloned().unwrap()
        );
        assert_eq!(fs::read_link(&name).unwrap(), Path::new("/tmp/b"));

        let file = fx.path("plain");
        fs::write(&file, "x").unwrap();
        let c = chunk(
            "file.symlink",
            "p",
            json!({"name": file, "target": "/tmp/a"}),
        );
        let out = fx.run(symlink, false, &c);
        assert_eq!(out.result, Some(false));
        assert!(
            out.comment
                .starts_with(&format!("File exists where the symlink {file} should be"))
        );
        let c = chunk(
            "file.symlink",
            "p",
            json!({"name": file, "target": "/tmp/a", "force": true}),
        );
        assert_eq!(fx.run(symlink, false, &c).result, Some(true));
        assert_eq!(fs::read_link(&file).unwrap(), Path::new("/tmp/a"));

        let deep = fx.path("x/y/link");
        let c = chunk(
            "file.symlink",
            "d",
            json!({"name": deep, "target": "/tmp/a"}),
        );
        assert_eq!(fx.run(symlink, false, &c).result, Some(false));
        let c = chunk(
            "file.symlink",
            "d",
            json!({"name": deep, "target": "/tmp/a", "makedirs": true}),
        );
        assert_eq!(fx.run(symlink, false, &c).result, Some(true));
    }

    #[test]
    fn absent_removes_files_and_directories() {
        let fx = Fixture::new();
        let file = fx.path("f");
        let dir = fx.path("d");
        fs::write(&file, "x").unwrap();
        fs::create_dir_all(fx.path("d/e")).unwrap();
        let cf = chunk("file.absent", "f", json!({"name": file}));
        let t = fx.run(absent, true, &cf);
        assert_eq!(
            (t.result, t.comment.as_str()),
            (None, format!("File {file} is set for removal").as_str())
        );
        assert!(Path::new(&file).exists());
        let out = fx.run(absent, false, &cf);
        assert_eq!(
            out.changes,
            json!({"removed": file}).as_object().cloned().unwrap()
        );
        assert!(!Path::new(&file).exists());
        assert_eq!(
            fx.run(absent, false, &cf),
            Outcome::ok(format!("File {file} is not present"))
        );
        let cd = chunk("file.absent", "d", json!({"name": dir}));
        assert_eq!(
            fx.run(absent, false, &cd).comment,
            format!("Removed directory {dir}")
        );
        assert!(!Path::new(&dir).exists());
        let root = chunk("file.absent", "r", json!({"name": "/"}));
        assert_eq!(fx.run(absent, false, &root).result, Some(false));
    }
}
