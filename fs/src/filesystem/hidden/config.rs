//! The hidden-version settings fixed at open: host, clock, retention policy, and the sink
//! told about versions as they come and go.

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, RwLock};

use super::who::{MAX_HOST, bounded, this_host};
use super::{HiddenVersion, PurgeReason};
use crate::filesystem::Filesystem;
use crate::filesystem::inode::Timestamp;
use crate::format::retention::Retention;

/// Told about hidden versions as they come and go (the audit trail hooks in here). Calls
/// come after the operation, outside the filesystem's lock. Every method defaults to
/// doing nothing.
pub trait HiddenSink: Send + Sync {
    fn hidden(&self, _version: &HiddenVersion) {}
    fn restored(&self, _version: &HiddenVersion, _to: &[u8]) {}
    fn purged(&self, _version: &HiddenVersion, _why: PurgeReason) {}
}

struct NoSink;
impl HiddenSink for NoSink {}

/// A clock for the records (tests set the time).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What [`Filesystem::open_with`] may be told.
#[derive(Clone, Default)]
pub struct FsOptions {
    /// The host named in hidden-version records; `None`: this machine's host name.
    pub host: Option<String>,
    /// The time of records and of the retention sweep; `None`: the system clock.
    pub clock: Option<Clock>,
    /// Told about hidden, restored and purged versions (including those the retention
    /// sweep frees at open).
    pub hidden_sink: Option<Arc<dyn HiddenSink>>,
}

/// The filesystem's hidden-version settings, fixed at open.
pub(crate) struct HiddenConfig {
    pub retention: Retention,
    pub(super) host: Vec<u8>,
    pub(super) clock: Option<Clock>,
    pub(super) sink: RwLock<Arc<dyn HiddenSink>>,
    /// Seconds of the last retention sweep.
    pub(super) last_sweep: AtomicI64,
}

impl HiddenConfig {
    pub fn new(retention: Retention, options: &FsOptions) -> Self {
        let host = options.host.clone().unwrap_or_else(this_host);
        Self {
            retention,
            host: bounded(host.as_bytes(), MAX_HOST).to_vec(),
            clock: options.clock.clone(),
            sink: RwLock::new(
                options
                    .hidden_sink
                    .clone()
                    .unwrap_or_else(|| Arc::new(NoSink)),
            ),
            last_sweep: AtomicI64::new(i64::MIN),
        }
    }

    pub(super) fn now(&self) -> Timestamp {
        match &self.clock {
            Some(clock) => clock(),
            None => Timestamp::now(),
        }
    }

    pub(super) fn sink(&self) -> Arc<dyn HiddenSink> {
        self.sink.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Filesystem {
    /// The hidden-version sink (the audit trail sets it).
    pub fn set_hidden_sink(&self, sink: Arc<dyn HiddenSink>) {
        *self
            .hidden_cfg
            .sink
            .write()
            .unwrap_or_else(|p| p.into_inner()) = sink;
    }

    /// The retention policy read from the header at open.
    pub fn retention(&self) -> &Retention {
        &self.hidden_cfg.retention
    }

    pub(crate) fn report_hidden(&self, version: Option<HiddenVersion>) {
        if let Some(v) = version {
            self.hidden_cfg.sink().hidden(&v);
        }
    }
}
