//! A hidden version as the library lists it, what made it, and why one is freed.

use crate::filesystem::dir::FileKind;
use crate::filesystem::inode::Timestamp;

/// What made a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HiddenEvent {
    Unlink,
    Rmdir,
    RenameOver,
    Truncate,
    /// `fallocate(PUNCH_HOLE)`: the version holds what lay in `[cut_at, end)` (the punched
    /// range within the file's size), zeros elsewhere.
    Punch {
        end: u64,
    },
}

impl HiddenEvent {
    /// The event's code in a record.
    pub(super) fn code(self) -> u8 {
        match self {
            HiddenEvent::Unlink => 1,
            HiddenEvent::Rmdir => 2,
            HiddenEvent::RenameOver => 3,
            HiddenEvent::Truncate => 4,
            HiddenEvent::Punch { .. } => 5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HiddenEvent::Unlink => "unlink",
            HiddenEvent::Rmdir => "rmdir",
            HiddenEvent::RenameOver => "rename-over",
            HiddenEvent::Truncate => "truncate",
            HiddenEvent::Punch { .. } => "punch",
        }
    }

    /// The event [`HiddenEvent::name`] names; a punch's range ends at `punch_end`.
    pub fn from_name(name: &str, punch_end: u64) -> Option<Self> {
        Some(match name {
            "unlink" => HiddenEvent::Unlink,
            "rmdir" => HiddenEvent::Rmdir,
            "rename-over" => HiddenEvent::RenameOver,
            "truncate" => HiddenEvent::Truncate,
            "punch" => HiddenEvent::Punch { end: punch_end },
            _ => return None,
        })
    }
}

/// One hidden version, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HiddenVersion {
    /// The path at the time, from the volume's root, without a leading `/`.
    pub path: Vec<u8>,
    /// 1 = the most recent hidden version of this path.
    pub version: u32,
    /// Volume-wide, increasing.
    pub id: u64,
    pub ino: u64,
    pub event: HiddenEvent,
    pub time: Timestamp,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The process name (`/proc/PID/comm`) at the time; empty when unknown.
    pub process: String,
    pub host: String,
    /// `st_mode` of the file (type and permissions).
    pub mode: u32,
    pub size: u64,
    /// 4 KiB blocks the version holds.
    pub blocks: u64,
    /// Truncate: the size the file was cut to (the version holds what lay past it).
    /// Punch: the start of the punched range (its end is in the event).
    pub cut_at: u64,
    /// The file was still open: its content is kept as of its last close, which has not
    /// happened yet (size and blocks are as of the event until then).
    pub open: bool,
}

impl HiddenVersion {
    pub fn path_text(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    /// A punch's range: (offset, length).
    pub fn punched(&self) -> Option<(u64, u64)> {
        match self.event {
            HiddenEvent::Punch { end } => Some((self.cut_at, end.saturating_sub(self.cut_at))),
            _ => None,
        }
    }

    pub fn kind(&self) -> Option<FileKind> {
        crate::filesystem::inode::kind_of(self.mode).ok()
    }
}

/// Why a version was freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgeReason {
    /// Older than the volume's keep-for.
    Retention,
    /// `domfs hidden purge`, on the domain manager's authority.
    Manager,
}
