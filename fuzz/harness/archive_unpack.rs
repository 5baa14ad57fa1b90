//! Fuzz body of `archive_unpack`: a pushed project source as both sides read it. The master
//! checks it with `corpus_master::render::read_salt_tree`; the agent opens it with
//! `open_source` (or a release with `open_tar`, by the first byte) and unpacks it with
//! `corpus_agent::lifecycle::unpack` into a temp dir. Whatever the bytes, nothing may land
//! outside the unpack directory, no link left in the tree may resolve outside it, and a `.salt/`
//! file the master checked must be what the agent unpacked.

use std::fs;
use std::path::Path;

use corpus_agent::lifecycle::{Limits, open_source, open_tar, unpack};

/// Unpacks `data` (first byte: bit 0 set = a release, under `tree/`) and checks the invariants;
/// panics only on a bug.
pub fn run(data: &[u8]) {
    let Some((&mode, archive)) = data.split_first() else {
        return;
    };
    let release = mode & 1 == 1;
    let base = tempfile::tempdir().expect("a temp dir");
    let input = base.path().join("input.tar");
    fs::write(&input, archive).expect("write the input");
    let sentinel_dir = base.path().join("outside");
    fs::create_dir(&sentinel_dir).expect("make the sentinel dir");
    fs::write(sentinel_dir.join("keep"), b"sentinel").expect("write the sentinel");
    let dst = base.path().join("tree");

    let checked = (!release)
        .then(|| corpus_master::render::read_salt_tree(&input).ok())
        .flatten();
    let limits = Limits {
        max_bytes: 8 << 20,
        max_entries: 4096,
    };
    let unpacked = if release {
        open_tar(&input).and_then(|reader| unpack(reader, &dst, Some("tree"), limits))
    } else {
        open_source(&input).and_then(|reader| unpack(reader, &dst, None, limits))
    };

    let mut around: Vec<String> = fs::read_dir(base.path())
        .expect("list the temp dir")
        .map(|e| {
            e.expect("a dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    around.sort();
    let expected: &[&str] = if dst.exists() {
        &["input.tar", "outside", "tree"]
    } else {
        &["input.tar", "outside"]
    };
    assert_eq!(around, expected, "the unpack wrote beside its directory");
    let sentinel: Vec<_> = fs::read_dir(&sentinel_dir)
        .expect("list the sentinel dir")
        .collect();
    assert_eq!(
        sentinel.len(),
        1,
        "the unpack wrote into a sibling directory"
    );
    assert_eq!(
        fs::read(sentinel_dir.join("keep")).expect("read the sentinel"),
        b"sentinel",
        "the unpack wrote through to a file outside its directory"
    );
    if unpacked.is_err() {
        return;
    }
    let root = fs::canonicalize(&dst).expect("the unpacked tree exists");
    check_links_inside(&root, &root);
    if let Some(files) = checked {
        for (rel, text) in files {
            let path = root.join(".salt").join(&rel);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue; // a later entry of the same path made it something the master skips
            };
            if meta.file_type().is_file() {
                let on_agent = fs::read(&path).expect("read an unpacked file");
                assert_eq!(
                    on_agent,
                    text.as_bytes(),
                    ".salt/{rel} differs between the master's check and the agent's unpack"
                );
            }
        }
    }
}

/// Panics when a symlink under `dir` resolves outside `root` (a dangling one is fine: it can
/// only ever point where the walk above allowed).
fn check_links_inside(root: &Path, dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            if let Ok(real) = fs::canonicalize(&path) {
                assert!(
                    real.starts_with(root),
                    "link {} resolves outside the tree, to {}",
                    path.display(),
                    real.display()
                );
            }
        } else if meta.is_dir() {
            check_links_inside(root, &path);
        }
    }
}
