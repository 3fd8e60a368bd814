//! The one way kubeedge-rs writes a file it must not lose or tear, and reads a file it did not
//! write.
//!
//! - [`write_atomically`]: a temporary file in the target's folder (created new, with an
//!   explicit mode, so it is never readable by others even for a moment), written, synced,
//!   renamed over the target, and the folder synced so that the rename itself survives a
//!   crash. A crash leaves the old file or the new one, never a torn one; a failed write
//!   removes its temporary file.
//! - [`read_bounded`]: the contents of a file, refused (`InvalidData`) when it is larger than a
//!   limit, so a hostile or corrupt file cannot make a reader allocate without bound.
//!
//! Errors are [`std::io::Error`]s naming the path. No dependencies beyond `std`.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let cert = dir.path().join("certs/server.crt");
//! kubeedge_fs::write_atomically(&cert, b"-----BEGIN CERTIFICATE-----", 0o644).unwrap();
//! kubeedge_fs::write_atomically(&cert, b"a newer one", 0o644).unwrap();
//! assert_eq!(kubeedge_fs::read_bounded(&cert, 64).unwrap(), b"a newer one");
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Temporary files of this process are numbered, so two writers never share one.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `data` atomically, creating its folder if needed; the new file has
/// permissions `mode` (before the umask), whatever the old one had.
pub fn write_atomically(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        named(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
        )
    })?;
    fs::create_dir_all(dir).map_err(|e| named(dir, e))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = dir.join(temp_name);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(data)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(named(&temp, e));
    }
    if let Err(e) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(named(path, e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| named(dir, e))
}

/// The contents of `path`; a file larger than `limit` bytes is refused with
/// [`io::ErrorKind::InvalidData`] after reading at most `limit + 1` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| named(path, e))?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| named(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(named(
            path,
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {limit} bytes, refused"),
            ),
        ));
    }
    Ok(bytes)
}

/// `e` with the path in front, keeping its kind.
fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn replaces_with_the_asked_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/key.pem");
        write_atomically(&path, b"one", 0o644).unwrap();
        write_atomically(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the new file's mode, not the old one's");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("key.pem")]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        write_atomically(&path, b"old", 0o644).unwrap();
        // A folder in the way of the rename: the write fails, the folder is untouched.
        let blocked = dir.path().join("taken");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("inside"), b"x").unwrap();
        let e = write_atomically(&blocked, b"new", 0o644).unwrap_err();
        assert!(e.to_string().contains("taken"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let leftovers = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp.")
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        fs::write(&path, vec![b'x'; 100]).unwrap();
        assert_eq!(read_bounded(&path, 100).unwrap().len(), 100);
        let e = read_bounded(&path, 99).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("larger than 99 bytes"), "{e}");
        let e = read_bounded(&dir.path().join("absent"), 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctest;
