//! A task's output written to its sandbox, rotated ([`LogRotation`]): what `marina-supervise`
//! does with the output of the task it runs, and of a containerd task when containerd's shim
//! runs it as the task's logging binary.
//!
//! The task writes into a pipe; [`copy`] reads it and writes [`RotatingFile`]s. Copying
//! (rather than giving the task the file itself) is what lets a file be rotated at an exact
//! size without losing a byte: nobody else holds the file open, so renaming it and starting
//! a new one is all a rotation takes. The price is that the task's output depends on the
//! copier being alive: should the supervisor be killed, the task's next write fails
//! (`SIGPIPE`), as with Mesos' logrotate logger.
//!
//! A full disk does not stop the task: what cannot be written is dropped (the pipe keeps
//! being drained, so the task never blocks on it), and once writing works again a line in
//! the file says how much was lost and why.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use marina_runtime::LogRotation;
use tokio::io::AsyncReadExt;

/// How much of the pipe is read at once.
const CHUNK_BYTES: usize = 64 * 1024;

/// One output stream's file in a directory, rotated at a size.
#[derive(Debug)]
pub struct RotatingFile {
    dir: PathBuf,
    name: String,
    rotation: LogRotation,
    /// The current file, opened for appending.
    file: File,
    /// How long the current file is (what it held when opened, plus what was written).
    len: u64,
    /// Each new file also becomes this process's stderr (the supervisor's own messages go
    /// where the task's errors go, rotated with them).
    follow_stderr: bool,
}

impl RotatingFile {
    /// Opens (creating it if missing) `dir/name` for appending. A file already past the size
    /// is rotated at the first write.
    pub fn open(dir: &Path, name: &str, rotation: LogRotation) -> io::Result<RotatingFile> {
        let path = dir.join(name);
        let file = open_append(&path)?;
        let len = file.metadata().map_err(|e| with_path(e, &path))?.len();
        // A size of 0 would never leave room for a byte.
        let rotation = LogRotation { max_bytes: rotation.max_bytes.max(1), ..rotation };
        Ok(RotatingFile { dir: dir.to_owned(), name: name.to_owned(), rotation, file, len, follow_stderr: false })
    }

    /// Makes this process's stderr this file, now and after every rotation.
    pub fn follow_stderr(mut self) -> io::Result<RotatingFile> {
        nix::unistd::dup2_stderr(&self.file).map_err(io::Error::from)?;
        self.follow_stderr = true;
        Ok(self)
    }

    /// The current file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// The `index`th rotated file (1 is the newest).
    pub fn rotated(&self, index: u32) -> PathBuf {
        self.dir.join(format!("{}.{index}", self.name))
    }

    /// Appends `bytes`, rotating whenever the current file is full: a file never holds more
    /// than `max_bytes` (a write is split across files if it must be).
    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.len >= self.rotation.max_bytes {
                self.rotate()?;
            }
            let room = self.rotation.max_bytes.saturating_sub(self.len);
            let n = usize::try_from(room).map_or(bytes.len(), |room| room.min(bytes.len()));
            if let Err(error) = self.file.write_all(&bytes[..n]) {
                // Part of it may have been written: measure rather than guess.
                self.len = self.file.metadata().map_or(self.len, |meta| meta.len());
                return Err(with_path(error, &self.path()));
            }
            self.len = self.len.saturating_add(n as u64);
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// `name` → `name.1` → … → `name.<keep>` (the oldest is replaced), then a new `name`.
    fn rotate(&mut self) -> io::Result<()> {
        let current = self.path();
        if self.rotation.keep == 0 {
            // Appending: the next write lands at the start again.
            self.file.set_len(0).map_err(|e| with_path(e, &current))?;
            self.len = 0;
            return Ok(());
        }
        // Missing when an earlier rotation renamed it but could not start the next one:
        // then shifting again would push the rotated files out for nothing.
        if fs::symlink_metadata(&current).is_ok() {
            for index in (1..self.rotation.keep).rev() {
                let (from, to) = (self.rotated(index), self.rotated(index + 1));
                match fs::rename(&from, &to) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => return Err(with_path(error, &from)),
                }
            }
            fs::rename(&current, self.rotated(1)).map_err(|e| with_path(e, &current))?;
        }
        self.file = open_append(&current)?;
        self.len = 0;
        if self.follow_stderr {
            // The old file stays this process's stderr if this fails; nothing is lost.
            let _ = nix::unistd::dup2_stderr(&self.file);
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).open(path).map_err(|e| with_path(e, path))
}

fn with_path(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// Copies everything `from` yields into `to` until the end of the stream (every writer has
/// closed it). Output that cannot be written is dropped and counted; the next write that
/// succeeds is preceded by a line saying how much was lost and why.
pub async fn copy(mut from: impl tokio::io::AsyncRead + Unpin, mut to: RotatingFile) {
    let mut chunk = vec![0; CHUNK_BYTES];
    let mut lost: u64 = 0;
    let mut why = String::new();
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if lost > 0 {
            let note = format!("[marina: {lost} bytes of output were lost: {why}]\n");
            if to.write(note.as_bytes()).is_ok() {
                lost = 0;
            }
        }
        if let Err(error) = to.write(&chunk[..n]) {
            lost = lost.saturating_add(n as u64);
            why = error.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn files_rotate_at_the_size_and_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = RotatingFile::open(dir.path(), "stdout", LogRotation { max_bytes: 10, keep: 2 }).unwrap();
        file.write(b"0123456789abc").unwrap();
        assert_eq!(
            (read(&dir.path().join("stdout")), read(&dir.path().join("stdout.1"))),
            ("abc".into(), "0123456789".into())
        );
        for chunk in ["defghij", "klmnopqrst", "uvwxyz"] {
            file.write(chunk.as_bytes()).unwrap();
        }
        // 0123456789 abcdefghij klmnopqrst uvwxyz: the first was pushed out.
        assert_eq!(read(&dir.path().join("stdout")), "uvwxyz");
        assert_eq!(read(&dir.path().join("stdout.1")), "klmnopqrst");
        assert_eq!(read(&dir.path().join("stdout.2")), "abcdefghij");
        assert!(!dir.path().join("stdout.3").exists());
    }

    #[test]
    fn a_file_already_full_is_rotated_at_the_first_write_and_keep_0_truncates() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("stderr"), b"from before").unwrap();
        let mut file = RotatingFile::open(dir.path(), "stderr", LogRotation { max_bytes: 5, keep: 0 }).unwrap();
        file.write(b"abcdefg").unwrap();
        assert_eq!(read(&dir.path().join("stderr")), "fg");
        assert!(!dir.path().join("stderr.1").exists());
        // A size of 0 is taken as 1 rather than looping for ever.
        let mut tiny = RotatingFile::open(dir.path(), "tiny", LogRotation { max_bytes: 0, keep: 1 }).unwrap();
        tiny.write(b"xy").unwrap();
        assert_eq!((read(&dir.path().join("tiny")), read(&dir.path().join("tiny.1"))), ("y".into(), "x".into()));
    }

    #[test]
    fn a_current_file_removed_by_someone_else_is_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = RotatingFile::open(dir.path(), "stdout", LogRotation { max_bytes: 4, keep: 1 }).unwrap();
        file.write(b"abcd").unwrap();
        fs::remove_file(dir.path().join("stdout")).unwrap();
        file.write(b"ef").unwrap();
        assert_eq!(read(&dir.path().join("stdout")), "ef");
        assert!(!dir.path().join("stdout.1").exists(), "nothing to shift: the full file was gone");
    }

    #[tokio::test]
    async fn copying_rotates_what_a_pipe_carries() {
        let dir = tempfile::tempdir().unwrap();
        let file = RotatingFile::open(dir.path(), "stdout", LogRotation { max_bytes: 1000, keep: 1 }).unwrap();
        let (reader, mut writer) = tokio::io::duplex(64);
        let copier = tokio::spawn(copy(reader, file));
        let text: String = (0..500).map(|i| format!("{i:04}\n")).collect();
        tokio::io::AsyncWriteExt::write_all(&mut writer, text.as_bytes()).await.unwrap();
        drop(writer);
        copier.await.unwrap();
        let (current, rotated) = (read(&dir.path().join("stdout")), read(&dir.path().join("stdout.1")));
        assert_eq!((rotated.len(), current.len()), (1000, 500));
        assert_eq!(format!("{rotated}{current}"), text[1000..], "the newest 1500 bytes, in order");
    }
}
