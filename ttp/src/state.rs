//! The state directory: everything the TTP is, in one directory of mode 0700.
//!
//! | file | mode | content |
//! |---|---|---|
//! | `master.key` | 0600 | K_TTP, 32 random bytes; never leaves the TTP except inside an encrypted backup |
//! | `ca.crt`, `ca.key` | 0644, 0600 | the CA that issues every TLS certificate |
//! | `server.crt`, `server.key` | 0644, 0600 | the server's certificate (SANs from `init`) |
//! | `registry.redb` | 0600 | managers, hosts, domains, read-write leases, checkpoints ([`crate::registry`]) |
//! | `domain-nonces` | 0600 | the domains' r, overwritten in place on destroy ([`crate::nonces`]) |
//! | `audit.redb` | 0600 | read-only hosts' audit entries, per domain ([`crate::audit_store`]); made by `serve` |
//! | `admin.sock` | 0600 | the operator's socket, while `serve` runs |
//! | `ttp.log` | 0600 | the decision log (default `--log`) |

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::pki::{self, Ca};
use crate::registry::Registry;
use crate::secret::Secret32;

pub const MASTER_KEY: &str = "master.key";
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";
pub const ADMIN_SOCKET: &str = "admin.sock";
pub const LOG_FILE: &str = "ttp.log";

/// A state directory (not necessarily initialised).
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.file(ADMIN_SOCKET)
    }

    pub fn default_log(&self) -> PathBuf {
        self.file(LOG_FILE)
    }

    /// Creates and fills a new state directory: K_TTP, the CA, the server certificate for
    /// `localhost`, `127.0.0.1`, `::1`, the machine's host name and `extra_sans`, and an
    /// empty registry. `root` must not exist or be an empty directory.
    pub fn init(root: impl Into<PathBuf>, extra_sans: &[String]) -> Result<StateDir> {
        let state = StateDir::new(root);
        state.create_root()?;
        let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        sans.extend(pki::local_host_name());
        sans.extend(extra_sans.iter().cloned());

        // Everything is generated before anything is written, so a bad --san leaves no
        // half-made directory behind.
        let master = Secret32::random()?;
        let ca_pem = pki::new_ca()?;
        let ca = Ca::from_pem(&ca_pem.cert, &ca_pem.key)?;
        let server = ca.issue_server(&sans, pki::DEFAULT_DAYS)?;

        state.write_new(MASTER_KEY, master.expose(), 0o600)?;
        state.write_new(CA_KEY, ca_pem.key.as_bytes(), 0o600)?;
        state.write_new(CA_CERT, ca_pem.cert.as_bytes(), 0o644)?;
        state.write_new(SERVER_KEY, server.key.as_bytes(), 0o600)?;
        state.write_new(SERVER_CERT, server.cert.as_bytes(), 0o644)?;
        Registry::create(&state.root)?;
        state.restrict(crate::registry::REGISTRY_FILE)?;
        Ok(state)
    }

    /// Creates the directory (0700), or takes an existing empty one.
    pub(crate) fn create_root(&self) -> Result<()> {
        match fs::DirBuilder::new().mode(0o700).create(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mut entries = fs::read_dir(&self.root).map_err(|e| Error::io(&self.root, e))?;
                if entries.next().is_some() {
                    return Err(Error::state(
                        &self.root,
                        "already exists and is not empty; refusing to overwrite it",
                    ));
                }
                fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
                    .map_err(|e| Error::io(&self.root, e))
            }
            Err(e) => Err(Error::io(&self.root, e)),
        }
    }

    /// Writes a file that must not exist yet, synced.
    pub(crate) fn write_new(&self, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
        let path = self.file(name);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(&path, e))
    }

    pub(crate) fn restrict(&self, name: &str) -> Result<()> {
        let path = self.file(name);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(&path, e))
    }

    /// Checks that this is an initialised state directory that only its owner can enter.
    pub fn check(&self) -> Result<()> {
        let meta = fs::metadata(&self.root).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::state(
                &self.root,
                "does not exist (create it with `domfs-ttp init --state DIR`)",
            ),
            _ => Error::io(&self.root, e),
        })?;
        if !meta.is_dir() {
            return Err(Error::state(&self.root, "is not a directory"));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(Error::state(
                &self.root,
                format!(
                    "has mode {:o}: others may read K_TTP (chmod 700 it)",
                    meta.mode() & 0o777
                ),
            ));
        }
        if !self.file(MASTER_KEY).is_file() {
            return Err(Error::state(
                &self.root,
                "has no master.key (not initialised with `domfs-ttp init`?)",
            ));
        }
        Ok(())
    }

    /// The uid owning the directory: with root, the only one allowed on the admin socket.
    pub fn owner_uid(&self) -> Result<u32> {
        fs::metadata(&self.root)
            .map(|m| m.uid())
            .map_err(|e| Error::io(&self.root, e))
    }

    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.file(name);
        fs::read(&path).map_err(|e| Error::io(&path, e))
    }

    pub fn read_text(&self, name: &str) -> Result<String> {
        let path = self.file(name);
        fs::read_to_string(&path).map_err(|e| Error::io(&path, e))
    }

    /// K_TTP.
    pub fn master_key(&self) -> Result<Secret32> {
        let path = self.file(MASTER_KEY);
        let mut file = fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut key = Secret32::zero();
        let mut extra = [0u8; 1];
        file.read_exact(key.as_mut())
            .map_err(|e| Error::io(&path, e))?;
        if file.read(&mut extra).map_err(|e| Error::io(&path, e))? != 0 {
            return Err(Error::state(&self.root, "master.key is not 32 bytes"));
        }
        Ok(key)
    }

    /// The CA, ready to issue certificates.
    pub fn ca(&self) -> Result<Ca> {
        Ca::from_pem(&self.read_text(CA_CERT)?, &self.read_text(CA_KEY)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_everything_once() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let root = tmp.path().join("ttp");
        let state = StateDir::init(&root, &["ttp.example.org".into()])?;
        state.check()?;
        assert_eq!(state.master_key()?.expose().len(), 32);
        let mode = |name: &str| {
            fs::metadata(state.file(name))
                .map(|m| m.mode() & 0o777)
                .unwrap_or(0)
        };
        assert_eq!(mode(MASTER_KEY), 0o600);
        assert_eq!(mode(CA_KEY), 0o600);
        assert_eq!(mode(SERVER_KEY), 0o600);
        assert_eq!(
            fs::metadata(&root).map(|m| m.mode() & 0o777).unwrap_or(0),
            0o700
        );
        assert!(StateDir::init(&root, &[]).is_err());
        // An existing empty directory is taken.
        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).map_err(|e| Error::io(&empty, e))?;
        StateDir::init(&empty, &[])?;
        Ok(())
    }

    #[test]
    fn a_bad_san_leaves_nothing_behind() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let root = tmp.path().join("ttp");
        assert!(StateDir::init(&root, &["bad name".into()]).is_err());
        assert_eq!(fs::read_dir(&root).map(|d| d.count()).unwrap_or(99), 0);
        Ok(())
    }
}
