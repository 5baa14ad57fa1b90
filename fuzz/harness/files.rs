//! The input format of the tree targets (`sls_render`, `pillar_compile`): files separated by
//! NUL bytes, each a path on its first line and its text after it. A path under `pillar/` goes
//! to the pillar tree, any other to the file root. Text, so seeds are readable and libFuzzer's
//! mutations mostly keep the framing.

/// The files of `data`, `(path, text)` in order; none when `data` is not UTF-8 (the master
/// refuses such templates before rendering).
pub fn split_files(data: &[u8]) -> Option<Vec<(&str, &str)>> {
    let text = std::str::from_utf8(data).ok()?;
    Some(
        text.split('\0')
            .filter_map(|record| record.split_once('\n'))
            .filter(|(path, _)| !path.is_empty())
            .collect(),
    )
}
