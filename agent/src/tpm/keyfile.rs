//! The host keys on disk: `STATE_DIR/tpm/host-keys.json`, mode 0600 in a 0700 directory.
//!
//! One file holds both keys' public and private blobs and the PCR selection the decryption
//! key is bound to, so replacing the keys is one atomic rename (a crash leaves the old set
//! or the new one, never an attestation key from one enrollment next to a decryption key
//! from another). The private blobs are encrypted by the TPM under the storage primary key:
//! they are useless without this TPM's owner seed.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tss_esapi::{
    structures::{Private, Public},
    traits::{Marshall, UnMarshall},
};

use super::{PcrSelection, TpmError};

const FILE_NAME: &str = "host-keys.json";
const VERSION: u32 = 1;

/// One TPM key as blobs: the marshalled TPMT_PUBLIC and the TPM2B_PRIVATE contents.
#[derive(Clone)]
pub(crate) struct KeyBlobs {
    pub public: Public,
    pub private: Private,
}

/// The host's two keys and the PCR selection the decryption key's policy covers.
#[derive(Clone)]
pub(crate) struct HostKeys {
    pub pcrs: PcrSelection,
    pub attestation: KeyBlobs,
    pub decryption: KeyBlobs,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    public: String,
    private: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    version: u32,
    pcrs: String,
    attestation_key: FileKey,
    decryption_key: FileKey,
}

pub(crate) fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("tpm")
}

pub(crate) fn path(state_dir: &Path) -> PathBuf {
    dir(state_dir).join(FILE_NAME)
}

fn failed(what: &str, path: &Path, e: impl std::fmt::Display) -> TpmError {
    TpmError::Failed(format!("{what} {}: {e}", path.display()))
}

/// What [`load`] found.
pub(crate) enum Stored {
    /// No key file: the host has not enrolled.
    Nothing,
    Keys(Box<HostKeys>),
    /// A key file that cannot be used (why); the next enrollment replaces it.
    Unusable(String),
}

/// The keys in `state_dir`. A file that cannot be read is an error; one that can be read
/// but not understood is [`Stored::Unusable`].
pub(crate) fn load(state_dir: &Path) -> Result<Stored, TpmError> {
    let path = path(state_dir);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::Nothing),
        Err(e) => return Err(failed("cannot read", &path, e)),
    };
    Ok(match parse(&text) {
        Ok(keys) => Stored::Keys(Box::new(keys)),
        Err(why) => Stored::Unusable(why),
    })
}

fn parse(text: &[u8]) -> Result<HostKeys, String> {
    if text.len() > 64 * 1024 {
        return Err("larger than 64 KiB".into());
    }
    let file: FileFormat = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    if file.version != VERSION {
        return Err(format!(
            "version {} (this agent reads {VERSION})",
            file.version
        ));
    }
    let pcrs: PcrSelection = file.pcrs.parse().map_err(|e: TpmError| e.to_string())?;
    let key = |k: &FileKey, which: &str| -> Result<KeyBlobs, String> {
        let bad = |e: &dyn std::fmt::Display| format!("the {which}: {e}");
        let public = hex::decode(&k.public).map_err(|e| bad(&e))?;
        let private = hex::decode(&k.private).map_err(|e| bad(&e))?;
        Ok(KeyBlobs {
            public: Public::unmarshall(&public).map_err(|e| bad(&e))?,
            private: Private::try_from(private).map_err(|e| bad(&e))?,
        })
    };
    Ok(HostKeys {
        pcrs,
        attestation: key(&file.attestation_key, "attestation key")?,
        decryption: key(&file.decryption_key, "decryption key")?,
    })
}

/// Writes `keys` to `state_dir`, replacing any previous keys atomically (temporary file,
/// fsync, rename, fsync of the directory).
pub(crate) fn save(state_dir: &Path, keys: &HostKeys) -> Result<(), TpmError> {
    let dir = dir(state_dir);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| failed("cannot create", &dir, e))?;
    let key = |k: &KeyBlobs| -> Result<FileKey, TpmError> {
        Ok(FileKey {
            public: hex::encode(
                k.public
                    .marshall()
                    .map_err(|e| TpmError::Failed(format!("marshalling a public key: {e}")))?,
            ),
            private: hex::encode(k.private.value()),
        })
    };
    let file = FileFormat {
        version: VERSION,
        pcrs: keys.pcrs.to_string(),
        attestation_key: key(&keys.attestation)?,
        decryption_key: key(&keys.decryption)?,
    };
    let mut text = serde_json::to_vec_pretty(&file)
        .map_err(|e| TpmError::Failed(format!("encoding the key file: {e}")))?;
    text.push(b'\n');

    let path = path(state_dir);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| failed("cannot create", &tmp, e))?;
    out.write_all(&text)
        .and_then(|()| out.sync_all())
        .map_err(|e| failed("cannot write", &tmp, e))?;
    drop(out);
    fs::rename(&tmp, &path).map_err(|e| failed("cannot replace", &path, e))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| failed("cannot sync", &dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn keys() -> HostKeys {
        let public = crate::tpm::templates::attestation_key().expect("template");
        HostKeys {
            pcrs: "sha256:7,16".parse().expect("pcrs"),
            attestation: KeyBlobs {
                public: public.clone(),
                private: Private::try_from(vec![1u8, 2, 3]).expect("private"),
            },
            decryption: KeyBlobs {
                public,
                private: Private::try_from(vec![4u8; 200]).expect("private"),
            },
        }
    }

    #[test]
    fn saves_and_loads_with_private_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(load(dir.path()), Ok(Stored::Nothing)));
        save(dir.path(), &keys()).expect("save");
        let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&super::dir(dir.path())), 0o700);
        assert_eq!(mode(&path(dir.path())), 0o600);
        let Ok(Stored::Keys(loaded)) = load(dir.path()) else {
            panic!("keys expected")
        };
        assert_eq!(loaded.pcrs, keys().pcrs);
        assert_eq!(loaded.attestation.private.value(), &[1, 2, 3]);
        assert_eq!(loaded.decryption.private.value(), &[4u8; 200][..]);
        assert_eq!(loaded.decryption.public, keys().decryption.public);

        // Saving again replaces the file (and leaves no temporary file behind).
        let mut other = keys();
        other.pcrs = "sha256:16".parse().expect("pcrs");
        save(dir.path(), &other).expect("save");
        let Ok(Stored::Keys(loaded)) = load(dir.path()) else {
            panic!("keys expected")
        };
        assert_eq!(loaded.pcrs.to_string(), "sha256:16");
        let names: Vec<_> = fs::read_dir(super::dir(dir.path()))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)]);
    }

    #[test]
    fn a_damaged_file_is_unusable_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        save(dir.path(), &keys()).expect("save");
        let good = fs::read_to_string(path(dir.path())).expect("read");
        for bad in [
            String::new(),
            "{".into(),
            good.replace("\"version\": 1", "\"version\": 2"),
            good.replace("sha256:7,16", "sha1:7"),
            good.replacen("\"public\": \"", "\"public\": \"zz", 1),
            good.replacen("\"public\": \"", "\"public\": \"00", 1),
            good.replace("\"version\"", "\"extra\": 1, \"version\""),
        ] {
            fs::write(path(dir.path()), &bad).expect("write");
            assert!(
                matches!(load(dir.path()), Ok(Stored::Unusable(_))),
                "{bad:?} should be unusable"
            );
        }
    }
}
