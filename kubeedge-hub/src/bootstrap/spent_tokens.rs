//! The record of single-use join tokens already used ([`SpentTokens`]), kept in a file
//! ([`SpentTokenFile`]) so that a restart, or another replica sharing the PKI directory, does
//! not accept a token twice.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Error, Result};

/// Where the join server records single-use tokens as spent.
pub trait SpentTokens: Send + Sync + fmt::Debug {
    /// Records the token `id` (valid until `expires`) as spent: `Ok(true)` if it was not spent
    /// before, `Ok(false)` if it was, an error if the record cannot be read or written (the join
    /// is then refused).
    fn spend(&self, id: &str, expires: SystemTime) -> Result<bool>;
}

/// [`SpentTokens`] in a text file, one `<id> <expiry as Unix seconds>` line per token, written
/// under an exclusive lock (`flock`) and synced before the join is answered. Expired entries
/// are dropped when the file is rewritten; the file holds at most
/// [`MAX_ENTRIES`](Self::MAX_ENTRIES) live tokens (more single-use joins are refused with a
/// clear error until some expire).
#[derive(Debug)]
pub struct SpentTokenFile {
    path: PathBuf,
    /// One writer at a time within the process (`flock` covers other processes).
    lock: Mutex<()>,
}

impl SpentTokenFile {
    /// The most live tokens the file holds.
    pub const MAX_ENTRIES: usize = 100_000;

    /// The longest line read (a 32-character id, a space, up to 20 digits).
    const MAX_LINE: usize = 64;

    /// A record in `path` (created on the first spend, mode 0600).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            lock: Mutex::new(()),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, what: &str, e: io::Error) -> Error {
        Error::TokenLedger(format!("{what} {}: {e}", self.path.display()))
    }
}

impl SpentTokens for SpentTokenFile {
    fn spend(&self, id: &str, expires: SystemTime) -> Result<bool> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&self.path)
            .map_err(|e| self.io("opening", e))?;
        file.lock().map_err(|e| self.io("locking", e))?;
        let result = spend_locked(&mut file, id, expires, SystemTime::now());
        // Closing the file releases the lock.
        result.map_err(|e| match e {
            Spend::Io(what, e) => self.io(what, e),
            Spend::Full => Error::TokenLedger(format!(
                "{} holds {} unexpired single-use tokens; no more can be used until some expire",
                self.path.display(),
                Self::MAX_ENTRIES
            )),
        })
    }
}

enum Spend {
    Io(&'static str, io::Error),
    Full,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn spend_locked(
    file: &mut File,
    id: &str,
    expires: SystemTime,
    now: SystemTime,
) -> std::result::Result<bool, Spend> {
    let limit = (SpentTokenFile::MAX_ENTRIES as u64 + 1) * SpentTokenFile::MAX_LINE as u64;
    let mut text = String::new();
    std::io::Read::by_ref(file)
        .take(limit)
        .read_to_string(&mut text)
        .map_err(|e| Spend::Io("reading", e))?;
    let now = unix(now);
    let mut live = Vec::new();
    for line in text.lines() {
        // A damaged line (a torn write, an edit) is dropped, never fatal: the worst it can do is
        // let that one token be used again.
        let Some((spent, exp)) = line.split_once(' ') else {
            continue;
        };
        let Ok(exp) = exp.parse::<u64>() else {
            continue;
        };
        if spent == id {
            return Ok(false);
        }
        if exp > now && line.len() <= SpentTokenFile::MAX_LINE {
            live.push(line);
        }
    }
    if live.len() >= SpentTokenFile::MAX_ENTRIES {
        return Err(Spend::Full);
    }
    let entry = format!("{id} {}\n", unix(expires));
    let rewrite = live.len() * 2 < text.lines().count();
    if rewrite {
        // Mostly expired: write the live entries back, then the new one.
        let mut out = String::with_capacity(text.len());
        for line in live {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&entry);
        file.set_len(0).map_err(|e| Spend::Io("truncating", e))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Spend::Io("seeking", e))?;
        file.write_all(out.as_bytes())
            .map_err(|e| Spend::Io("writing", e))?;
    } else {
        file.seek(SeekFrom::End(0))
            .map_err(|e| Spend::Io("seeking", e))?;
        file.write_all(entry.as_bytes())
            .map_err(|e| Spend::Io("writing", e))?;
    }
    file.sync_all().map_err(|e| Spend::Io("syncing", e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_token_is_spent_once_and_expired_entries_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spent-tokens");
        let ledger = SpentTokenFile::new(&path);
        let later = SystemTime::now() + Duration::from_secs(3600);
        let a = "0123456789abcdef0123456789abcdef";
        let b = "fedcba9876543210fedcba9876543210";
        assert!(ledger.spend(a, later).unwrap());
        assert!(!ledger.spend(a, later).unwrap());
        // Another process (or a restart) reads the same file.
        assert!(!SpentTokenFile::new(&path).spend(a, later).unwrap());
        assert!(ledger.spend(b, later).unwrap());

        // Expired and damaged lines are dropped on the next rewrite.
        let mut junk = String::new();
        for i in 0..10 {
            junk.push_str(&format!("{i:032x} 1\n"));
        }
        junk.push_str("garbage\n");
        std::fs::write(&path, format!("{a} {}\n{junk}", unix(later))).unwrap();
        assert!(ledger.spend(b, later).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!ledger.spend(a, later).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
