//! Test-only devices: an in-memory container, one that loses power at a chosen operation,
//! and one that fails on demand.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use domfs::device::Device;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Sector size of the simulated disk: a sector write is atomic, a larger write is not.
pub const SECTOR: usize = 512;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn check_range(len: usize, offset: u64, size: usize) -> io::Result<usize> {
    let start = usize::try_from(offset).map_err(|_| io::Error::other("offset overflows"))?;
    match start.checked_add(len) {
        Some(end) if end <= size => Ok(start),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{len} bytes at {offset} are beyond the end ({size} bytes)"),
        )),
    }
}

fn read_from(image: &[u8], buf: &mut [u8], offset: u64) -> io::Result<()> {
    let start = check_range(buf.len(), offset, image.len())?;
    buf.copy_from_slice(&image[start..start + buf.len()]);
    Ok(())
}

fn write_into(image: &mut [u8], buf: &[u8], offset: u64) -> io::Result<()> {
    let start = check_range(buf.len(), offset, image.len())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    image[start..start + buf.len()].copy_from_slice(buf);
    Ok(())
}

/// An in-memory container. Every write is durable at once.
pub struct MemDevice {
    bytes: Mutex<Vec<u8>>,
}

impl MemDevice {
    /// A zero-filled container of `size` bytes.
    pub fn new(size: usize) -> Self {
        Self::from_bytes(vec![0u8; size])
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            bytes: Mutex::new(bytes),
        }
    }

    /// A copy of the whole container.
    pub fn snapshot(&self) -> Vec<u8> {
        lock(&self.bytes).clone()
    }

    /// Puts back a snapshot (of the same size or not: the size follows it).
    pub fn restore(&self, bytes: Vec<u8>) {
        *lock(&self.bytes) = bytes;
    }

    /// The container's bytes, without a copy.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

impl Device for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_from(&lock(&self.bytes), buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        write_into(&mut lock(&self.bytes), buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn size(&self) -> u64 {
        lock(&self.bytes).len() as u64
    }

    fn name(&self) -> String {
        "memory".into()
    }
}

/// One write or sync as the device saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Write { offset: u64, len: usize },
    Sync,
}

/// Which of the unsynced writes survive the power cut.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Survivors {
    /// Each write survives with a probability the seed draws (0, ½, 1 or anything between).
    Random,
    /// Each write survives with this probability.
    Probability(f64),
}

struct CrashState {
    /// What is on the platters.
    durable: Vec<u8>,
    /// Writes since the last sync, in issue order. Reads see them over `durable`, as
    /// through a page cache.
    pending: Vec<(u64, Vec<u8>)>,
    /// Writes and syncs still allowed; the operation that finds it at zero loses power.
    countdown: Option<u64>,
    post_crash: Option<Vec<u8>>,
    crashed: bool,
    log: Vec<Op>,
    rng: StdRng,
    survivors: Survivors,
    tear: bool,
}

/// A disk with a volatile write cache that loses power after a number of operations.
///
/// `write_at` only queues (reads see queued writes, as through a page cache); `sync` makes
/// everything queued durable. When the countdown of writes and syncs runs out, the power is
/// cut: the post-crash image is the durable image plus a random subset of the queued
/// writes (the write being issued included), one of which is torn at a 512-byte boundary
/// (a random subset of its sectors reaches the disk; a sector is never torn). From then on
/// every operation fails.
pub struct CrashDevice {
    state: Mutex<CrashState>,
    size: usize,
}

impl CrashDevice {
    /// A device over `image` that never loses power until armed.
    pub fn new(image: Vec<u8>, seed: u64) -> Self {
        let size = image.len();
        Self {
            state: Mutex::new(CrashState {
                durable: image,
                pending: Vec::new(),
                countdown: None,
                post_crash: None,
                crashed: false,
                log: Vec::new(),
                rng: StdRng::seed_from_u64(seed),
                survivors: Survivors::Random,
                tear: true,
            }),
            size,
        }
    }

    /// Loses power at the operation after the next `ops` writes and syncs (`arm(0)`: at
    /// the very next one).
    pub fn arm(&self, ops: u64) {
        lock(&self.state).countdown = Some(ops);
    }

    pub fn disarm(&self) {
        lock(&self.state).countdown = None;
    }

    /// Which queued writes survive the cut, and whether one of them is torn.
    pub fn set_survivors(&self, survivors: Survivors, tear: bool) {
        let mut s = lock(&self.state);
        s.survivors = survivors;
        s.tear = tear;
    }

    /// Cuts the power now (if not cut yet).
    pub fn power_cut(&self) {
        let mut s = lock(&self.state);
        if !s.crashed {
            crash(&mut s);
        }
    }

    pub fn crashed(&self) -> bool {
        lock(&self.state).crashed
    }

    /// The container as found after the power cut.
    pub fn post_crash_image(&self) -> Option<Vec<u8>> {
        lock(&self.state).post_crash.clone()
    }

    /// The container as found after the power cut, without a copy (`None` the second
    /// time).
    pub fn take_post_crash_image(&self) -> Option<Vec<u8>> {
        lock(&self.state).post_crash.take()
    }

    /// Every write and sync issued so far (the one that lost power included).
    pub fn log(&self) -> Vec<Op> {
        lock(&self.state).log.clone()
    }

    /// Writes and syncs issued so far.
    pub fn ops(&self) -> u64 {
        lock(&self.state).log.len() as u64
    }

    /// Counts one write or sync; true if it finds the power gone or cuts it.
    fn tick(s: &mut CrashState) -> bool {
        match s.countdown {
            Some(0) => true,
            Some(n) => {
                s.countdown = Some(n - 1);
                false
            }
            None => false,
        }
    }
}

fn power_lost() -> io::Error {
    io::Error::other("simulated power loss")
}

/// Computes the post-crash image and stops the device.
fn crash(s: &mut CrashState) {
    let p = match s.survivors {
        Survivors::Probability(p) => p,
        Survivors::Random => match s.rng.random_range(0..4) {
            0 => 0.0,
            1 => 1.0,
            2 => 0.5,
            _ => s.rng.random::<f64>(),
        },
    };
    let pending = std::mem::take(&mut s.pending);
    let kept: Vec<usize> = (0..pending.len())
        .filter(|_| s.rng.random_bool(p.clamp(0.0, 1.0)))
        .collect();
    let torn = if s.tear && !kept.is_empty() {
        Some(kept[s.rng.random_range(0..kept.len())])
    } else {
        None
    };
    let mut image = std::mem::take(&mut s.durable);
    for i in kept {
        let (offset, data) = &pending[i];
        let start = *offset as usize;
        if Some(i) == torn {
            // Sector by sector, each one all or nothing. Writes are sector-aligned in
            // domfs; a misaligned one is torn at the disk's sector boundaries.
            let mut at = 0;
            while at < data.len() {
                let abs = start + at;
                let next = (abs / SECTOR + 1) * SECTOR - start;
                let end = next.min(data.len());
                if s.rng.random_bool(0.5) {
                    image[abs..start + end].copy_from_slice(&data[at..end]);
                }
                at = end;
            }
        } else {
            image[start..start + data.len()].copy_from_slice(data);
        }
    }
    s.post_crash = Some(image);
    s.crashed = true;
}

impl Device for CrashDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = lock(&self.state);
        if s.crashed {
            return Err(power_lost());
        }
        read_from(&s.durable, buf, offset)?;
        // The page cache: queued writes over the durable bytes, in issue order.
        let end = offset + buf.len() as u64;
        for (at, data) in &s.pending {
            let data_end = at + data.len() as u64;
            if *at < end && offset < data_end {
                let from = offset.max(*at);
                let to = end.min(data_end);
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = lock(&self.state);
        if s.crashed {
            return Err(power_lost());
        }
        check_range(buf.len(), offset, self.size)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        s.log.push(Op::Write {
            offset,
            len: buf.len(),
        });
        let cut = Self::tick(&mut s);
        // Issued, so it may or may not reach the disk.
        s.pending.push((offset, buf.to_vec()));
        if cut {
            crash(&mut s);
            return Err(power_lost());
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut s = lock(&self.state);
        if s.crashed {
            return Err(power_lost());
        }
        s.log.push(Op::Sync);
        if Self::tick(&mut s) {
            crash(&mut s);
            return Err(power_lost());
        }
        let pending = std::mem::take(&mut s.pending);
        for (offset, data) in pending {
            write_into(&mut s.durable, &data, offset)?;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size as u64
    }

    fn name(&self) -> String {
        "crash-test device".into()
    }
}

/// Passes everything to `inner`, except that reads, writes or syncs fail while their flag
/// is set.
pub struct FaultyDevice {
    pub inner: Arc<dyn Device>,
    pub fail_reads: AtomicBool,
    pub fail_writes: AtomicBool,
    pub fail_syncs: AtomicBool,
}

impl FaultyDevice {
    pub fn new(inner: Arc<dyn Device>) -> Self {
        Self {
            inner,
            fail_reads: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
            fail_syncs: AtomicBool::new(false),
        }
    }

    pub fn set_fail_reads(&self, on: bool) {
        self.fail_reads.store(on, Ordering::SeqCst);
    }

    pub fn set_fail_writes(&self, on: bool) {
        self.fail_writes.store(on, Ordering::SeqCst);
    }

    pub fn set_fail_syncs(&self, on: bool) {
        self.fail_syncs.store(on, Ordering::SeqCst);
    }
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} error"))
}

impl Device for FaultyDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(injected("read"));
        }
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(injected("write"));
        }
        self.inner.write_at(buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        if self.fail_syncs.load(Ordering::SeqCst) {
            return Err(injected("sync"));
        }
        self.inner.sync()
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn name(&self) -> String {
        format!("faulty {}", self.inner.name())
    }
}
