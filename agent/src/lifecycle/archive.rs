//! Release archives and source tarballs. A release is a zstd-compressed tar (level 3,
//! multithreaded) whose first entry is `corpus-release.json` (the manifest) and whose tree sits
//! under `tree/`. Unpacking refuses absolute paths, `..`, links leaving the tree, writing through
//! a link, device files and FIFOs, and stops at the size and entry limits.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::ReleaseArchive;

/// The manifest entry's name inside a release archive.
pub const MANIFEST_ENTRY: &str = "corpus-release.json";
/// The prefix of the tree's entries inside a release archive.
pub const TREE_PREFIX: &str = "tree";
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// What an archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sum of the entries' sizes.
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 20 << 30,
            max_entries: 2_000_000,
        }
    }
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Bundles `tree` into the release archive `out` (written via `out.partial`, then renamed),
/// with `manifest` as its first entry. Returns the archive with sha256, size and the manifest
/// completed by them.
pub fn bundle(tree: &Path, out: &Path, mut manifest: Value) -> io::Result<ReleaseArchive> {
    let partial = out.with_extension("partial");
    let file = File::create(&partial)?;
    let hashing = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hash: Sha256::new(),
        size: 0,
    };
    let mut enc = zstd::Encoder::new(hashing, 3)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    if threads > 1 {
        // Multithreading is an optional libzstd feature; fall back to one thread.
        let _ = enc.multithread(threads);
    }
    let mut builder = tar::Builder::new(enc);
    builder.follow_symlinks(false);
    let text = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    header.set_cksum();
    builder.append_data(&mut header, MANIFEST_ENTRY, text.as_slice())?;
    builder.append_dir_all(TREE_PREFIX, tree)?;
    let enc = builder.into_inner()?;
    let mut hashing = enc.finish()?;
    hashing.flush()?;
    let file = hashing.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    fs::rename(&partial, out)?;
    super::layout::sync_dir(out.parent().unwrap_or(Path::new(".")))?;
    let sha256 = hex::encode(hashing.hash.finalize());
    if let Value::Object(m) = &mut manifest {
        m.insert("sha256".into(), json!(sha256));
        m.insert("size".into(), json!(hashing.size));
    }
    Ok(ReleaseArchive {
        path: out.to_path_buf(),
        sha256,
        size: hashing.size,
        manifest,
    })
}

/// Opens `path` as a tar stream, decompressing zstd when the file starts with its magic. For
/// release archives, which the agent built itself; project sources go through [`open_source`].
pub fn open_tar(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut file = File::open(path)?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic)?;
    let file = {
        use std::io::Seek;
        file.rewind()?;
        file
    };
    if n == 4 && magic == ZSTD_MAGIC {
        Ok(Box::new(zstd::Decoder::new(file)?))
    } else {
        Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
    }
}

/// Opens the project source at `path` as a plain tar stream, the one format the master checks
/// (`read_salt_tree`): a file that starts like a zstd frame is refused rather than decompressed,
/// so a tar/zstd polyglot cannot unpack to a tree the master never saw.
pub fn open_source(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut file = File::open(path)?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic)?;
    if n == 4 && magic == ZSTD_MAGIC {
        return Err(refused(format!(
            "source {} starts like a zstd stream: a project source must be a plain tar",
            path.display()
        )));
    }
    {
        use std::io::Seek;
        file.rewind()?;
    }
    Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
}

/// Reads the manifest of the release archive at `path` (its first entry).
pub fn read_manifest(path: &Path) -> io::Result<Value> {
    let mut archive = tar::Archive::new(open_tar(path)?);
    let mut entries = archive.entries()?;
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a corpus release archive: its first entry must be {MANIFEST_ENTRY}",
                path.display()
            ),
        )
    };
    let mut entry = entries.next().ok_or_else(bad)??;
    if entry.path()?.as_ref() != Path::new(MANIFEST_ENTRY) {
        return Err(bad());
    }
    let mut text = Vec::new();
    entry.by_ref().take(1 << 20).read_to_end(&mut text)?;
    serde_json::from_slice(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("manifest of {}: {e}", path.display()),
        )
    })
}

/// An unsafe or over-limit archive.
fn refused(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("refused: {what}"))
}

/// Checks an entry path: relative, only normal components. Returns it cleaned.
fn safe_relative(path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(refused(format!("entry {} contains ..", path.display())));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(refused(format!("entry {} is absolute", path.display())));
            }
        }
    }
    Ok(out)
}

/// Whether a symlink at `link` (relative to the tree) pointing to `target` stays in the tree.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = link.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

/// How many links one resolution may follow before it counts as a loop (the kernel's limit).
const MAX_LINK_HOPS: usize = 40;

/// Whether the symlink `link` (relative to the canonical tree `root`) resolves inside the tree,
/// following links found in the tree component by component. Missing components are taken by
/// name; a loop, an unreadable link or a step above the root count as leaving.
fn resolves_inside(root: &Path, link: &Path) -> bool {
    // The real path reached so far, as components under the root.
    let mut at: Vec<std::ffi::OsString> = link
        .parent()
        .map(|p| p.iter().map(|c| c.to_os_string()).collect())
        .unwrap_or_default();
    let mut pending: Vec<std::ffi::OsString> = Vec::new();
    let mut hops = 0usize;
    let push_target = |pending: &mut Vec<std::ffi::OsString>, target: &Path| -> bool {
        if target.is_absolute() {
            return false;
        }
        for c in target.iter().rev() {
            pending.push(c.to_os_string());
        }
        true
    };
    let Ok(first) = fs::read_link(root.join(link)) else {
        return false;
    };
    if !push_target(&mut pending, &first) {
        return false;
    }
    while let Some(component) = pending.pop() {
        match component.to_str() {
            Some(".") => continue,
            Some("..") => {
                if at.pop().is_none() {
                    return false;
                }
                continue;
            }
            _ => {}
        }
        let candidate: PathBuf = root
            .iter()
            .chain(at.iter().map(|c| c.as_os_str()))
            .collect();
        let candidate = candidate.join(&component);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return false;
                }
                match fs::read_link(&candidate) {
                    Ok(target) if push_target(&mut pending, &target) => {}
                    _ => return false,
                }
            }
            Ok(_) => at.push(component),
            Err(e) if e.kind() == io::ErrorKind::NotFound => at.push(component),
            Err(_) => return false,
        }
    }
    true
}

/// Counts of what an unpack wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
}

/// Unpacks the tar stream `reader` into the new, empty directory `dst`. With `prefix`, only
/// entries under it are unpacked (stripped of it) and `corpus-release.json` is skipped; any
/// other entry is refused.
pub fn unpack(
    reader: impl Read,
    dst: &Path,
    prefix: Option<&str>,
    limits: Limits,
) -> io::Result<UnpackStats> {
    fs::create_dir_all(dst)?;
    let mut archive = tar::Archive::new(reader);
    let mut stats = UnpackStats::default();
    // Paths this archive made symlinks: nothing may be written through them.
    let mut links: HashSet<PathBuf> = HashSet::new();
    let mut dirs_made: HashSet<PathBuf> = HashSet::new();
    // Directory modes are applied last, so a read-only directory does not block its entries.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut symlinks: Vec<PathBuf> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let rel = match prefix {
            Some(prefix) => {
                if raw.as_path() == Path::new(MANIFEST_ENTRY) {
                    continue;
                }
                match raw.strip_prefix(prefix) {
                    Ok(rest) => rest.to_path_buf(),
                    Err(_) => {
                        return Err(refused(format!(
                            "entry {} is outside {prefix}/",
                            raw.display()
                        )));
                    }
                }
            }
            None => raw.clone(),
        };
        let rel = safe_relative(&rel)?;
        stats.entries += 1;
        stats.bytes += entry.header().size().unwrap_or(0);
        if stats.entries > limits.max_entries {
            return Err(refused(format!("more than {} entries", limits.max_entries)));
        }
        if stats.bytes > limits.max_bytes {
            return Err(refused(format!("more than {} bytes", limits.max_bytes)));
        }
        if rel.as_os_str().is_empty() {
            continue; // the root itself
        }
        let mut ancestor = rel.parent();
        while let Some(a) = ancestor {
            if links.contains(a) {
                return Err(refused(format!(
                    "entry {} is written through the link {}",
                    raw.display(),
                    a.display()
                )));
            }
            ancestor = a.parent();
        }
        let target = dst.join(&rel);
        // An earlier entry may have made this very path a symlink: never write through it.
        if fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&target)?;
            links.remove(&rel);
        }
        if let Some(parent) = target.parent()
            && !dirs_made.contains(parent)
        {
            fs::create_dir_all(parent)?;
            dirs_made.insert(parent.to_path_buf());
        }
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            tar::EntryType::Directory => {
                if !target.is_dir() {
                    fs::create_dir(&target)?;
                }
                dirs_made.insert(target.clone());
                dir_modes.push((target, mode));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                entry.set_preserve_permissions(false);
                entry.set_preserve_mtime(true);
                entry.set_unpack_xattrs(false);
                entry.unpack(&target)?;
            }
            tar::EntryType::Symlink => {
                let to = entry
                    .link_name()?
                    .ok_or_else(|| refused(format!("symlink {} has no target", raw.display())))?
                    .into_owned();
                if !link_stays_inside(&rel, &to) {
                    return Err(refused(format!(
                        "link {} -> {} leaves the tree",
                        raw.display(),
                        to.display()
                    )));
                }
                let _ = fs::remove_file(&target);
                symlink(&to, &target)?;
                links.insert(rel.clone());
                symlinks.push(target);
            }
            tar::EntryType::Link => {
                let to = entry
                    .link_name()?
                    .ok_or_else(|| refused(format!("hard link {} has no target", raw.display())))?
                    .into_owned();
                let to = match prefix {
                    Some(p) => to.strip_prefix(p).map(Path::to_path_buf).map_err(|_| {
                        refused(format!("hard link {} leaves the tree", raw.display()))
                    })?,
                    None => to,
                };
                let to = safe_relative(&to)?;
                // The source must be a regular file of the tree reached through no link: a
                // hard link to a symlink (link(2) does not follow it) or through one would
                // plant a link the checks above never saw.
                let through_link = to.ancestors().any(|a| links.contains(a));
                let source = dst.join(&to);
                let regular = fs::symlink_metadata(&source).is_ok_and(|m| m.file_type().is_file());
                if through_link || !regular {
                    return Err(refused(format!(
                        "hard link {} -> {} is not to a regular file of the tree",
                        raw.display(),
                        to.display()
                    )));
                }
                let _ = fs::remove_file(&target);
                fs::hard_link(&source, &target)?;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                return Err(refused(format!(
                    "entry {} is a {other:?} (device files, FIFOs and sparse files are not \
                     allowed)",
                    raw.display()
                )));
            }
        }
    }
    // A chain of in-tree links can still resolve outside (`a -> .`, `b -> a/a/../../x`): follow
    // every link through the tree as the kernel would. A target that does not exist yet is no
    // excuse: the walk goes on by name, and one it cannot finish counts as leaving.
    let root = fs::canonicalize(dst)?;
    for link in symlinks {
        let rel = link.strip_prefix(dst).unwrap_or(&link);
        let by_kernel_outside = fs::canonicalize(&link).is_ok_and(|real| !real.starts_with(&root));
        if by_kernel_outside || !resolves_inside(&root, rel) {
            return Err(refused(format!(
                "link {} resolves outside the tree (or cannot be resolved)",
                rel.display()
            )));
        }
    }
    for (dir, mode) in dir_modes.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of `(path, link target)` symlinks and `(path, "")` one-byte files.
    fn tar_of(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, target) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            if target.is_empty() {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(1);
                header.set_cksum();
                builder.append_data(&mut header, path, &b"x"[..]).unwrap();
            } else {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder.append_link(&mut header, path, target).unwrap();
            }
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_dangling_link_chain_that_leaves_the_tree_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("tree");
        // `a/a` is the root, so `a/a/../..` is above it; `evil` does not exist yet.
        let bytes = tar_of(&[("a", "."), ("b", "a/a/../../evil")]);
        let err = unpack(bytes.as_slice(), &dst, None, Limits::default()).unwrap_err();
        assert!(
            err.to_string().contains("link b resolves outside the tree"),
            "{err}"
        );
        // A loop cannot be resolved: it counts as leaving.
        let bytes = tar_of(&[("x", "y"), ("y", "x")]);
        let err = unpack(
            bytes.as_slice(),
            &tmp.path().join("loop"),
            None,
            Limits::default(),
        );
        assert!(err.is_err());
        // Links inside the tree pass, dangling or not, through other links or not.
        let bytes = tar_of(&[
            ("d/f", ""),
            ("d/up", ".."),
            ("l", "d/up/d/f"),
            ("later", "d/not-yet/file"),
            ("d/e/back", "../../d/f"),
        ]);
        unpack(
            bytes.as_slice(),
            &tmp.path().join("ok"),
            None,
            Limits::default(),
        )
        .unwrap();
        assert_eq!(fs::read_to_string(tmp.path().join("ok/l")).unwrap(), "x");
    }

    #[test]
    fn a_source_that_starts_like_zstd_is_refused_not_decompressed() {
        let tmp = tempfile::tempdir().unwrap();
        let plain = tmp.path().join("plain.tar");
        fs::write(&plain, tar_of(&[("f", "")])).unwrap();
        let mut read = Vec::new();
        open_source(&plain).unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, fs::read(&plain).unwrap());
        let zstd = tmp.path().join("src.tar");
        fs::write(
            &zstd,
            zstd::encode_all(&fs::read(&plain).unwrap()[..], 3).unwrap(),
        )
        .unwrap();
        let err = open_source(&zstd)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("must be a plain tar"), "{err}");
    }

    /// One raw tar entry, written without the tar crate's path checks (hostile archives are
    /// exactly what those checks would refuse to build).
    fn raw_entry(out: &mut Vec<u8>, path: &str, kind: u8, link: &str) {
        let mut header = tar::Header::new_old();
        let name = path.as_bytes();
        let len = name.len().min(99);
        header.as_old_mut().name[..len].copy_from_slice(&name[..len]);
        let link = link.as_bytes();
        let len = link.len().min(99);
        header.as_old_mut().linkname[..len].copy_from_slice(&link[..len]);
        header.set_mode(0o755);
        header.as_old_mut().linkflag[0] = kind;
        let body: &[u8] = if kind == b'0' { b"x" } else { b"" };
        header.set_size(body.len() as u64);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        if !body.is_empty() {
            let mut block = [0u8; 512];
            block[..body.len()].copy_from_slice(body);
            out.extend_from_slice(&block);
        }
    }

    fn hostile_path() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let part = prop::sample::select(vec!["a", "b", "..", ".", "", "evil"]);
        (any::<bool>(), prop::collection::vec(part, 1..5)).prop_map(|(absolute, parts)| {
            let path = parts.join("/");
            if absolute { format!("/{path}") } else { path }
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64)
        ))]
        #[test]
        fn no_archive_writes_or_links_outside_its_tree(
            entries in proptest::collection::vec(
                (hostile_path(), proptest::sample::select(vec![b'0', b'2', b'5', b'1']), hostile_path()),
                1..8,
            )
        ) {
            let sandbox = tempfile::tempdir().unwrap();
            let dst = sandbox.path().join("tree");
            let mut bytes = Vec::new();
            for (path, kind, link) in &entries {
                raw_entry(&mut bytes, path, *kind, link);
            }
            bytes.extend_from_slice(&[0u8; 1024]);
            let result = unpack(bytes.as_slice(), &dst, None, Limits::default());
            let outside: Vec<_> = fs::read_dir(sandbox.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n != "tree")
                .collect();
            proptest::prop_assert!(outside.is_empty(), "{entries:?} wrote {outside:?}");
            if result.is_ok() {
                let root = fs::canonicalize(&dst).unwrap();
                let mut stack = vec![dst.clone()];
                while let Some(dir) = stack.pop() {
                    for entry in fs::read_dir(&dir).unwrap().flatten() {
                        let path = entry.path();
                        let kind = entry.file_type().unwrap();
                        if kind.is_symlink() {
                            let rel = path.strip_prefix(&root).or_else(|_| path.strip_prefix(&dst));
                            let rel = rel.unwrap().to_path_buf();
                            proptest::prop_assert!(
                                resolves_inside(&root, &rel),
                                "{entries:?}: {} leaves", rel.display()
                            );
                        } else if kind.is_dir() {
                            stack.push(path);
                        }
                    }
                }
            }
        }
    }
}
