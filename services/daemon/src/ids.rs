//! Random identifiers (status update uuids, agent and framework ids).

/// A random RFC 4122 version-4 UUID in its usual text form.
pub fn uuid() -> String {
    let mut bits = fastrand::u128(..);
    // Version 4, variant 1.
    bits = (bits & !(0xf << 76)) | (0x4 << 76);
    bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// A prefixed random id, e.g. `agent-1f3a…`: readable in logs, unique in practice.
pub fn prefixed(prefix: &str) -> String {
    format!("{prefix}-{}", uuid())
}

/// An instance id kept in `work_dir/<file>`: made once, the same across restarts.
pub fn stable(work_dir: &std::path::Path, file: &str, prefix: &str) -> std::io::Result<String> {
    std::fs::create_dir_all(work_dir).map_err(at(work_dir))?;
    let path = work_dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            let id = prefixed(prefix);
            std::fs::write(&path, &id).map_err(at(&path))?;
            Ok(id)
        }
    }
}

/// An I/O error that names its path: an operator reading "Permission denied" must learn
/// which path it was about.
fn at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> std::io::Error + '_ {
    move |error| std::io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_work_dir_that_cannot_be_made_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let error = super::stable(&file.join("below"), "id", "x").unwrap_err();
        assert!(error.to_string().contains(&file.display().to_string()), "{error}");
    }

    #[test]
    fn uuids_are_version_4_and_distinct() {
        let a = super::uuid();
        let b = super::uuid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }
}
