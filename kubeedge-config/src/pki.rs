//! The cluster CA's files, written with `kubeedge_fs::write_atomically` (a temporary file with
//! an explicit mode, synced, renamed, the folder synced: a crash leaves the old file or the new
//! one, never a torn key). [`load_or_create_ca`] loads the CA's certificate
//! and key, or makes a new CA when neither file exists (the key, mode 0600, first; the
//! certificate, which readers wait for, last); when only one of them exists it refuses, so a
//! lost certificate never makes a second CA that no joined node trusts.

use std::path::Path;

use kubeedge_hub::join::CertificateAuthority;

use crate::{Error, Result};

/// The largest PEM file read (a certificate or a key).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// `kubeedge_fs::write_atomically`, with this crate's error.
pub(crate) fn write_atomically(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    kubeedge_fs::write_atomically(path, data, mode).map_err(file_error)
}

/// `kubeedge_fs::read_bounded`, with this crate's error.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    kubeedge_fs::read_bounded(path, limit).map_err(file_error)
}

/// A `kubeedge_fs` error (which names its path) as this crate's.
fn file_error(e: std::io::Error) -> Error {
    Error::Invalid(e.to_string())
}

/// The cluster CA in `cert_path` and `key_path` (PEM): loaded when both exist, generated and
/// written when neither does, an error when only one does.
pub fn load_or_create_ca(cert_path: &Path, key_path: &Path) -> Result<CertificateAuthority> {
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let cert = read_bounded(cert_path, MAX_PEM_BYTES)?;
            let key = read_bounded(key_path, MAX_PEM_BYTES)?;
            let ca = CertificateAuthority::from_pem(cert, key).map_err(|e| {
                Error::Invalid(format!(
                    "CA {} + {}: {e}",
                    cert_path.display(),
                    key_path.display()
                ))
            })?;
            tracing::info!(cert = %cert_path.display(), key = %key_path.display(), "pki: loaded the CA");
            Ok(ca)
        }
        (false, false) => {
            let ca =
                CertificateAuthority::generate().map_err(|e| Error::Invalid(format!("CA: {e}")))?;
            // The key first, the certificate last: readers wait for the certificate.
            write_atomically(key_path, ca.key_pem().as_bytes(), 0o600)?;
            write_atomically(cert_path, ca.cert_pem().as_bytes(), 0o644)?;
            tracing::info!(cert = %cert_path.display(), key = %key_path.display(), "pki: generated a CA");
            Ok(ca)
        }
        (present, _) => {
            let (there, missing) = if present {
                (cert_path, key_path)
            } else {
                (key_path, cert_path)
            };
            Err(Error::Invalid(format!(
                "{} exists but {} does not: not replacing a CA (the CA's certificate and key go together)",
                there.display(),
                missing.display()
            )))
        }
    }
}

/// [`load_or_create_ca`] with `ca.pem` and `ca-key.pem` in `dir` (`cloudcore --pki-dir`).
pub fn load_or_create_ca_in(dir: &Path) -> Result<CertificateAuthority> {
    load_or_create_ca(&dir.join("ca.pem"), &dir.join("ca-key.pem"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_ca_is_made_once_with_a_private_key_and_never_replaced_half() {
        let dir = tempfile::tempdir().unwrap();
        let ca = load_or_create_ca_in(dir.path()).unwrap();
        let key = dir.path().join("ca-key.pem");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create_ca_in(dir.path()).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
        std::fs::remove_file(dir.path().join("ca.pem")).unwrap();
        let e = load_or_create_ca_in(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not replacing a CA"), "{e}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary files left"
        );
    }
}
