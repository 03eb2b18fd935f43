//! Unpacking fetched archives into a sandbox, and writing fetched files there, without ever
//! writing outside it.
//!
//! An archive is hostile input: its entries may be named `../x` or `/etc/x`, a symbolic link
//! may point out of the sandbox and a later entry write "through" it, a hard link may name a
//! file outside, a device node may appear, and a few kilobytes may unpack to terabytes. So:
//! every entry's name must be a plain relative path (no `..`, not absolute); directories are
//! made one component at a time and never followed through a symbolic link (each existing
//! component must be a real directory); files are created with `O_EXCL` after removing
//! whatever non-directory stood there (so the final component is never followed either);
//! symbolic links must be relative and, once everything is unpacked, resolve inside the
//! sandbox (anything else is removed and fails the fetch: the task's output streams are
//! opened by name in the sandbox later, and must not land elsewhere); hard links must name a
//! regular file already unpacked; device nodes and FIFOs are skipped; modes keep only the
//! permission bits; and what is written counts against a byte and an entry budget.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The most entries one archive may hold.
pub const MAX_ENTRIES: u64 = 100_000;

/// Why a fetched file could not be placed in the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("entry {entry:?} {why}")]
    Unsafe { entry: String, why: &'static str },
    #[error("unpacks to more than {limit} bytes (fetcher.max_extracted_mb)")]
    TooLarge { limit: u64 },
    #[error("holds more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("the symbolic link {entry:?} points outside the sandbox")]
    LinkEscapes { entry: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("not a readable zip archive: {0}")]
    Zip(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> ExtractError {
    let what = what.into();
    move |source| ExtractError::Io { what, source }
}

/// The archive formats the fetcher unpacks, known by their file name (as Mesos' fetcher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Tar,
    TarGz,
    TarBz2,
    TarXz,
    Zip,
}

impl ArchiveKind {
    pub fn of(name: &str) -> Option<ArchiveKind> {
        let name = name.to_ascii_lowercase();
        let kinds = [
            (".tar.gz", ArchiveKind::TarGz),
            (".tgz", ArchiveKind::TarGz),
            (".tar.bz2", ArchiveKind::TarBz2),
            (".tbz2", ArchiveKind::TarBz2),
            (".tar.xz", ArchiveKind::TarXz),
            (".txz", ArchiveKind::TarXz),
            (".tar", ArchiveKind::Tar),
            (".zip", ArchiveKind::Zip),
        ];
        kinds.into_iter().find(|(suffix, _)| name.ends_with(suffix)).map(|(_, kind)| kind)
    }
}

/// Where unpacking writes, and how much it may still write.
pub struct Sandbox<'a> {
    root: &'a Path,
    bytes_left: u64,
    limit: u64,
    entries: u64,
    links: Vec<(String, PathBuf)>,
}

impl<'a> Sandbox<'a> {
    /// `root` must exist; at most `limit` bytes are written.
    pub fn new(root: &'a Path, limit: u64) -> Self {
        Sandbox { root, bytes_left: limit, limit, entries: 0, links: Vec::new() }
    }

    /// Unpacks `archive` (a `kind` archive) into the sandbox.
    pub fn unpack(&mut self, archive: File, kind: ArchiveKind) -> Result<(), ExtractError> {
        let reader = io::BufReader::new(archive);
        match kind {
            ArchiveKind::Tar => self.unpack_tar(reader),
            ArchiveKind::TarGz => self.unpack_tar(flate2::read::MultiGzDecoder::new(reader)),
            ArchiveKind::TarBz2 => self.unpack_tar(bzip2::read::MultiBzDecoder::new(reader)),
            ArchiveKind::TarXz => self.unpack_tar(lzma_rust2::XzReader::new(reader, true)),
            ArchiveKind::Zip => self.unpack_zip(reader),
        }?;
        self.check_links()
    }

    /// Writes `source` at `name` in the sandbox, executable or not.
    pub fn write_file(&mut self, name: &str, source: &mut impl Read, executable: bool) -> Result<(), ExtractError> {
        let relative = plain_path(name)?;
        let mode = if executable { 0o755 } else { 0o644 };
        self.create_file(name, &relative, source, mode)
    }

    fn unpack_tar(&mut self, reader: impl Read) -> Result<(), ExtractError> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(io_error("reading the archive"))?;
        for entry in entries {
            let mut entry = entry.map_err(io_error("reading the archive"))?;
            self.count_entry()?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let relative = match plain_path(&name) {
                // `./` itself, which many archives begin with.
                Err(ExtractError::Unsafe { why: EMPTY, .. }) => continue,
                other => other?,
            };
            let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
            match entry.header().entry_type() {
                tar::EntryType::Directory => self.create_dir(&name, &relative, mode)?,
                tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                    self.create_file(&name, &relative, &mut entry, mode)?
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                        .unwrap_or_default();
                    self.create_symlink(&name, &relative, &target)?;
                }
                tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                        .unwrap_or_default();
                    self.create_hard_link(&name, &relative, &target)?;
                }
                // Metadata entries (pax headers, GNU long names) are read by the tar crate.
                // Devices and FIFOs are no artifact's business.
                kind => tracing::debug!(entry = %name, ?kind, "archive entry skipped"),
            }
        }
        Ok(())
    }

    fn unpack_zip(&mut self, reader: impl Read + io::Seek) -> Result<(), ExtractError> {
        let mut archive = zip::ZipArchive::new(reader).map_err(|error| ExtractError::Zip(error.to_string()))?;
        for index in 0..archive.len() {
            self.count_entry()?;
            let mut file = archive.by_index(index).map_err(|error| ExtractError::Zip(error.to_string()))?;
            let name = file.name().map_err(|error| ExtractError::Zip(error.to_string()))?.into_owned();
            let relative = match plain_path(&name) {
                Err(ExtractError::Unsafe { why: EMPTY, .. }) => continue,
                other => other?,
            };
            let mode = file.unix_mode().unwrap_or(0o644) & 0o777;
            if file.is_dir() {
                self.create_dir(&name, &relative, mode)?;
            } else if file.is_symlink() {
                // A zip keeps a link's target as its content.
                let mut target = String::new();
                file.by_ref()
                    .take(4096)
                    .read_to_string(&mut target)
                    .map_err(io_error(format!("reading the link {name}")))?;
                self.create_symlink(&name, &relative, &target)?;
            } else {
                self.create_file(&name, &relative, &mut file, mode)?;
            }
        }
        Ok(())
    }

    fn count_entry(&mut self) -> Result<(), ExtractError> {
        self.entries += 1;
        if self.entries > MAX_ENTRIES { Err(ExtractError::TooManyEntries) } else { Ok(()) }
    }

    /// Makes every directory above `relative` (never through a symbolic link) and returns
    /// where `relative` goes.
    fn parent_dirs(&self, name: &str, relative: &Path) -> Result<PathBuf, ExtractError> {
        let mut path = self.root.to_path_buf();
        let components: Vec<Component<'_>> = relative.components().collect();
        for component in &components[..components.len().saturating_sub(1)] {
            path.push(component);
            self.ensure_dir(name, &path)?;
        }
        Ok(self.root.join(relative))
    }

    /// `path` is a real directory (made if absent), never a link to one.
    fn ensure_dir(&self, name: &str, path: &Path) -> Result<(), ExtractError> {
        match fs::symlink_metadata(path) {
            Ok(metadata) if metadata.is_dir() => Ok(()),
            Ok(_) => Err(ExtractError::Unsafe { entry: name.to_owned(), why: "passes through a file or link" }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(path).map_err(io_error(format!("making {}", path.display())))
            }
            Err(error) => Err(ExtractError::Io { what: format!("looking at {}", path.display()), source: error }),
        }
    }

    fn create_dir(&mut self, name: &str, relative: &Path, mode: u32) -> Result<(), ExtractError> {
        let path = self.parent_dirs(name, relative)?;
        self.ensure_dir(name, &path)?;
        // Owner access always: the agent must be able to fill and remove it.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode | 0o700))
            .map_err(io_error(format!("setting the mode of {}", path.display())))
    }

    /// Removes a non-directory at `path`, so a new entry replaces it instead of writing
    /// through it.
    fn clear(&self, name: &str, path: &Path) -> Result<(), ExtractError> {
        match fs::symlink_metadata(path) {
            Ok(metadata) if metadata.is_dir() => {
                Err(ExtractError::Unsafe { entry: name.to_owned(), why: "would replace a directory" })
            }
            Ok(_) => fs::remove_file(path).map_err(io_error(format!("replacing {}", path.display()))),
            Err(_) => Ok(()),
        }
    }

    fn create_file(
        &mut self,
        name: &str,
        relative: &Path,
        source: &mut impl Read,
        mode: u32,
    ) -> Result<(), ExtractError> {
        let path = self.parent_dirs(name, relative)?;
        self.clear(name, &path)?;
        // O_EXCL: never opens an existing file, nor follows a link at the final component.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode | 0o600)
            .open(&path)
            .map_err(io_error(format!("creating {}", path.display())))?;
        let written = io::copy(&mut source.take(self.bytes_left.saturating_add(1)), &mut file)
            .map_err(io_error(format!("writing {}", path.display())))?;
        if written > self.bytes_left {
            return Err(ExtractError::TooLarge { limit: self.limit });
        }
        self.bytes_left -= written;
        // The umask narrowed the mode at creation.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode | 0o600))
            .map_err(io_error(format!("setting the mode of {}", path.display())))
    }

    fn create_symlink(&mut self, name: &str, relative: &Path, target: &str) -> Result<(), ExtractError> {
        if target.is_empty() || target.starts_with('/') || target.contains('\0') {
            return Err(ExtractError::LinkEscapes { entry: name.to_owned() });
        }
        // Lexically inside from where the link is; checked again on the disk at the end,
        // where links through other links resolve.
        let mut depth = relative.components().count() as i64 - 1;
        for part in Path::new(target).components() {
            match part {
                Component::ParentDir => depth -= 1,
                Component::Normal(_) => depth += 1,
                _ => {}
            }
            if depth < 0 {
                return Err(ExtractError::LinkEscapes { entry: name.to_owned() });
            }
        }
        let path = self.parent_dirs(name, relative)?;
        self.clear(name, &path)?;
        std::os::unix::fs::symlink(target, &path).map_err(io_error(format!("linking {}", path.display())))?;
        self.links.push((name.to_owned(), path));
        Ok(())
    }

    fn create_hard_link(&mut self, name: &str, relative: &Path, target: &str) -> Result<(), ExtractError> {
        let target_path = self.root.join(plain_path(target)?);
        let is_file = fs::symlink_metadata(&target_path).is_ok_and(|metadata| metadata.is_file());
        // Only to a file this archive unpacked: the parent directories were checked then.
        if !is_file || !target_path.starts_with(self.root) {
            return Err(ExtractError::Unsafe { entry: name.to_owned(), why: "links to no file of the archive" });
        }
        let path = self.parent_dirs(name, relative)?;
        self.clear(name, &path)?;
        fs::hard_link(&target_path, &path).map_err(io_error(format!("linking {}", path.display())))
    }

    /// Every symbolic link resolves, and inside the sandbox; offenders are removed.
    fn check_links(&mut self) -> Result<(), ExtractError> {
        let root = fs::canonicalize(self.root).map_err(io_error(format!("resolving {}", self.root.display())))?;
        let mut escaped = None;
        for (name, path) in self.links.drain(..) {
            let inside = fs::canonicalize(&path).is_ok_and(|resolved| resolved.starts_with(&root));
            if !inside {
                let _ = fs::remove_file(&path);
                escaped.get_or_insert(name);
            }
        }
        match escaped {
            Some(entry) => Err(ExtractError::LinkEscapes { entry }),
            None => Ok(()),
        }
    }
}

const EMPTY: &str = "names nothing";

/// `name` as a relative path of plain components (`.` dropped), or why it is not one.
fn plain_path(name: &str) -> Result<PathBuf, ExtractError> {
    let unsafe_entry = |why| ExtractError::Unsafe { entry: name.to_owned(), why };
    if name.contains('\0') {
        return Err(unsafe_entry("contains a NUL"));
    }
    let mut path = PathBuf::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_entry("leaves the sandbox (`..`)")),
            Component::RootDir | Component::Prefix(_) => return Err(unsafe_entry("is an absolute path")),
        }
    }
    if path.as_os_str().is_empty() {
        return Err(unsafe_entry(EMPTY));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, Write};

    use super::*;

    /// A tar archive of `(name, content)` files, `(name, target)` symlinks when the content
    /// starts with `->`, and directories when the name ends with `/`. Names are written raw
    /// (the tar crate's builder refuses `..`, as it should; a hostile archive is not built
    /// with it).
    fn tar_of(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, content) in entries {
            let mut header = tar::Header::new_gnu();
            {
                let raw = header.as_old_mut();
                raw.name[..name.len()].copy_from_slice(name.as_bytes());
            }
            header.set_mode(0o644);
            if let Some(target) = content.strip_prefix("->") {
                header.set_entry_type(tar::EntryType::Symlink);
                header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
                header.set_size(0);
                header.set_cksum();
                builder.append(&header, io::empty()).unwrap();
            } else if name.ends_with('/') {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                header.set_cksum();
                builder.append(&header, io::empty()).unwrap();
            } else {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(content.len() as u64);
                header.set_cksum();
                builder.append(&header, content.as_bytes()).unwrap();
            }
        }
        builder.into_inner().unwrap()
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file.rewind().unwrap();
        file
    }

    fn unpack(root: &Path, bytes: &[u8], kind: ArchiveKind) -> Result<(), ExtractError> {
        Sandbox::new(root, 1 << 20).unpack(file_with(bytes), kind)
    }

    #[test]
    fn archives_are_known_by_their_names() {
        assert_eq!(ArchiveKind::of("app.tar.gz"), Some(ArchiveKind::TarGz));
        assert_eq!(ArchiveKind::of("APP.TGZ"), Some(ArchiveKind::TarGz));
        assert_eq!(ArchiveKind::of("a.tbz2"), Some(ArchiveKind::TarBz2));
        assert_eq!(ArchiveKind::of("a.tar.xz"), Some(ArchiveKind::TarXz));
        assert_eq!(ArchiveKind::of("a.tar"), Some(ArchiveKind::Tar));
        assert_eq!(ArchiveKind::of("a.zip"), Some(ArchiveKind::Zip));
        assert_eq!(ArchiveKind::of("run.sh"), None);
        assert_eq!(ArchiveKind::of("a.gz"), None);
    }

    #[test]
    fn every_format_unpacks_files_directories_and_inner_links() {
        let tar = tar_of(&[("./", ""), ("app/", ""), ("app/run.sh", "echo hi"), ("app/current", "->run.sh")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&tar).unwrap();
        for (kind, bytes) in [
            (ArchiveKind::Tar, tar.clone()),
            (ArchiveKind::TarGz, gz.finish().unwrap()),
            (ArchiveKind::TarBz2, bz.finish().unwrap()),
        ] {
            let root = tempfile::tempdir().unwrap();
            unpack(root.path(), &bytes, kind).unwrap_or_else(|error| panic!("{kind:?}: {error}"));
            assert_eq!(fs::read_to_string(root.path().join("app/run.sh")).unwrap(), "echo hi", "{kind:?}");
            assert_eq!(fs::read_to_string(root.path().join("app/current")).unwrap(), "echo hi", "{kind:?}");
        }

        let mut zip = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        zip.add_directory("bin/", options).unwrap();
        zip.start_file("bin/tool", options).unwrap();
        zip.write_all(b"#!/bin/sh\n").unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        let root = tempfile::tempdir().unwrap();
        unpack(root.path(), &bytes, ArchiveKind::Zip).unwrap();
        let tool = root.path().join("bin/tool");
        assert_eq!(fs::read_to_string(&tool).unwrap(), "#!/bin/sh\n");
        assert_eq!(fs::metadata(&tool).unwrap().permissions().mode() & 0o777, 0o755);
    }

    #[test]
    fn xz_archives_unpack() {
        let tar = tar_of(&[("data.txt", "xz")]);
        let mut xz = lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::default()).unwrap();
        xz.write_all(&tar).unwrap();
        let bytes = xz.finish().unwrap();
        let root = tempfile::tempdir().unwrap();
        unpack(root.path(), &bytes, ArchiveKind::TarXz).unwrap();
        assert_eq!(fs::read_to_string(root.path().join("data.txt")).unwrap(), "xz");
    }

    #[test]
    fn nothing_is_written_outside_the_sandbox() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("sandbox");
        fs::create_dir(&root).unwrap();
        let cases: [(&[(&str, &str)], &str); 6] = [
            (&[("../x", "escaped")], "leaves the sandbox"),
            (&[("a/../../x", "escaped")], "leaves the sandbox"),
            (&[("/tmp/marina-escaped", "escaped")], "absolute"),
            (&[("up", "->.."), ("up/x", "escaped")], "points outside"),
            // Lexically inside, but `s` is `.`: `s/..` is the sandbox's parent.
            (&[("s", "->."), ("e", "->s/.."), ("e/x", "escaped")], "passes through"),
            (&[("stdout", "->/etc/passwd")], "points outside"),
        ];
        for (entries, expected) in cases {
            let error = unpack(&root, &tar_of(entries), ArchiveKind::Tar).unwrap_err().to_string();
            assert!(error.contains(expected), "{entries:?}: {error}");
            assert!(!outer.path().join("x").exists(), "{entries:?} wrote outside");
        }
        // `e` -> `s/..` alone (no write through it) is still refused, and removed: the task's
        // output would be opened through it.
        let error = unpack(&root, &tar_of(&[("s2", "->."), ("e2", "->s2/..")]), ArchiveKind::Tar).unwrap_err();
        assert!(error.to_string().contains("points outside"), "{error}");
        assert!(fs::symlink_metadata(root.join("e2")).is_err(), "the escaping link is removed");
        assert!(!Path::new("/tmp/marina-escaped").exists());
    }

    #[test]
    fn unpacking_is_bounded() {
        let root = tempfile::tempdir().unwrap();
        let big = "x".repeat(4096);
        let bytes = tar_of(&[("big", &big)]);
        let error = Sandbox::new(root.path(), 1000).unpack(file_with(&bytes), ArchiveKind::Tar).unwrap_err();
        assert!(matches!(error, ExtractError::TooLarge { limit: 1000 }), "{error}");
    }

    #[test]
    fn a_file_replaces_a_link_instead_of_writing_through_it() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("sandbox");
        fs::create_dir(&root).unwrap();
        let victim = outer.path().join("victim");
        fs::write(&victim, "untouched").unwrap();
        std::os::unix::fs::symlink(&victim, root.join("run.sh")).unwrap();
        Sandbox::new(&root, 1 << 20).write_file("run.sh", &mut "new".as_bytes(), true).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(fs::read_to_string(root.join("run.sh")).unwrap(), "new");
        assert_eq!(fs::metadata(root.join("run.sh")).unwrap().permissions().mode() & 0o777, 0o755);
    }
}
