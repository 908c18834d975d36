//! Exit codes: stable, documented in the README, so scripts can test them.

use crate::Error;

pub const OK: u8 = 0;
/// Anything not listed below.
pub const FAILURE: u8 = 1;
/// Bad command line.
pub const USAGE: u8 = 2;
/// Wrong key, an unreadable key file, or the TTP or agent refused to release the key.
pub const KEY: u8 = 3;
/// fsck found damage, or a read hit an integrity error.
pub const INTEGRITY: u8 = 4;
/// Not a domfs volume, a damaged header or superblock, a truncated container, an
/// unsupported format.
pub const BAD_VOLUME: u8 = 5;
/// The volume is full.
pub const NO_SPACE: u8 = 6;
/// The operating system reported an I/O error.
pub const IO: u8 = 7;
/// Refused to overwrite something (use --force).
pub const REFUSED: u8 = 8;

/// A refusal that is not an error of the library (e.g. "would overwrite").
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The TTP or the agent said no (not in the access list, revoked, lease held, …).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyRefused(pub String);

pub fn code_for(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<KeyRefused>().is_some() {
        return KEY;
    }
    if let Some(failed) = e.downcast_ref::<crate::control::client::Failed>() {
        return failed.code;
    }
    if e.downcast_ref::<Refused>().is_some() {
        return REFUSED;
    }
    match e.chain().find_map(|c| c.downcast_ref::<Error>()) {
        Some(Error::WrongKey | Error::BadKeyFile(_)) => KEY,
        Some(Error::Integrity(_) | Error::ForgedSuperblock(_)) => INTEGRITY,
        Some(
            Error::NotDomfs
            | Error::UnsupportedVersion(_)
            | Error::CorruptHeader(_)
            | Error::CorruptSuperblock(_)
            | Error::DamagedSuperblock(_)
            | Error::Truncated { .. }
            | Error::Unformatted,
        ) => BAD_VOLUME,
        Some(Error::NoSpace) => NO_SPACE,
        Some(Error::Io { .. }) => IO,
        _ if e
            .chain()
            .any(|c| c.downcast_ref::<std::io::Error>().is_some()) =>
        {
            IO
        }
        _ => FAILURE,
    }
}

/// What to do next, where there is something useful to say.
pub fn hint(e: &anyhow::Error) -> Option<&'static str> {
    match e.chain().find_map(|c| c.downcast_ref::<Error>())? {
        Error::WrongKey => Some("this volume was created with another key; check --key-file"),
        Error::NotDomfs => Some("is this the right path? `domfs create` makes a volume"),
        Error::Integrity(_) => {
            Some("the container was modified or damaged; `domfs fsck` lists every bad block")
        }
        Error::CorruptHeader(_) | Error::CorruptSuperblock(_) => {
            Some("`domfs fsck` tells what else is damaged; restore the volume from a backup")
        }
        Error::DamagedSuperblock(_) => Some(
            "`domfs fsck` shows what else is damaged; restore from a backup, or open read-only to copy the data out",
        ),
        Error::Truncated { .. } => Some("the container was cut short: restore it from a backup"),
        Error::Unformatted => Some("the volume has no filesystem yet: mount it read-write once"),
        _ => None,
    }
}
