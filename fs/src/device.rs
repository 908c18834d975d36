//! The raw container: a regular file or a block device, behind a small trait so that a
//! distributed backend (Ceph RBD, an object store) can come later, and so that tests can
//! wrap it to inject I/O errors and simulate power loss.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

/// Byte-addressed storage with explicit durability.
pub trait Device: Send + Sync {
    /// Fills `buf` from `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Everything written before returns is durable when this returns.
    fn sync(&self) -> io::Result<()>;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// A name for messages (the path).
    fn name(&self) -> String;
}

/// Whether a device is opened for writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// A regular file or a block device.
pub struct FileDevice {
    file: File,
    size: u64,
    path: PathBuf,
}

impl FileDevice {
    pub fn open(path: &Path, access: Access) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(access == Access::ReadWrite)
            .open(path)?;
        Self::from_file(file, path)
    }

    pub fn from_file(file: File, path: &Path) -> io::Result<Self> {
        let meta = file.metadata()?;
        let size = if meta.file_type().is_block_device() {
            block_device_size(&file)?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or a block device",
            ));
        };
        Ok(Self {
            file,
            size,
            path: path.to_owned(),
        })
    }

    pub fn is_block_device(&self) -> bool {
        self.file
            .metadata()
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false)
    }
}

/// The size of a block device: seeking to its end is portable and needs no ioctl.
fn block_device_size(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut handle = file;
    let size = handle.seek(SeekFrom::End(0))?;
    handle.seek(SeekFrom::Start(0))?;
    Ok(size)
}

impl Device for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write beyond the end of the container",
            ));
        }
        self.file.write_all_at(buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        // fdatasync is enough: the container's size never changes after creation.
        self.file.sync_data()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}
