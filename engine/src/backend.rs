//! Block backends. All calls are blocking; callers run them off the async
//! workers.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use parking_lot::RwLock;

/// A byte-addressed store with durable flush.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Size in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `buf`; with `fua` the data is durable when this returns.
    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Deallocates a range; later reads return zeros.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Grows the store (shrinking is not supported).
    fn grow(&self, new_len: u64) -> io::Result<()>;
    /// Reads only if that cannot block on I/O (a page-cache hit), so the
    /// caller may do it on an async worker. `Ok(false)`: use `read_at` off
    /// the async workers instead.
    fn try_read_nowait(&self, _offset: u64, _buf: &mut [u8]) -> io::Result<bool> {
        Ok(false)
    }
    /// Writes (without FUA) as much as can be written without blocking on
    /// I/O; returns the bytes written. The caller writes the rest with
    /// `write_at` off the async workers.
    fn try_write_nowait(&self, _offset: u64, _buf: &[u8]) -> io::Result<usize> {
        Ok(0)
    }
    /// Whether a `write_at` of `len` bytes at `offset` without FUA is
    /// expected to finish without waiting on I/O, so it may run on an
    /// async worker.
    fn write_inline_ok(&self, _offset: u64, _len: usize) -> bool {
        false
    }
    fn describe(&self) -> String;
    /// Which bytes of `offset..offset+len` hold data (`true`) and which are
    /// holes, as ordered ranges covering it. Stores that cannot tell report
    /// everything mapped.
    fn allocated(&self, offset: u64, len: u64) -> io::Result<Vec<(std::ops::Range<u64>, bool)>> {
        Ok(vec![(offset..offset.saturating_add(len), true)])
    }
}

/// A sparse file, or a raw block device opened as a file.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    path: PathBuf,
    len: RwLock<u64>,
    block_device: bool,
    /// Cleared when the kernel or filesystem refuses RWF_NOWAIT.
    nowait_reads: AtomicBool,
    nowait_writes: AtomicBool,
    /// Hole punches and resizes in flight: they hold the inode lock while
    /// waiting on I/O, so a write issued meanwhile may block.
    exclusive_ops: AtomicU32,
}

/// Buffered writes larger than this always go to the blocking pool.
const INLINE_WRITE_MAX: usize = 128 << 10;

/// Whether the page cache holds few enough dirty pages that a buffered
/// write will not be throttled: below half the kernel's background
/// writeback threshold. Sampled from /proc/vmstat at most every 20 ms.
fn writeback_headroom() -> bool {
    static BASE: OnceLock<Instant> = OnceLock::new();
    static LAST_MS: AtomicU64 = AtomicU64::new(u64::MAX);
    static OK: AtomicBool = AtomicBool::new(false);
    let now = BASE.get_or_init(Instant::now).elapsed().as_millis() as u64;
    let last = LAST_MS.load(Ordering::Relaxed);
    if (last == u64::MAX || now.saturating_sub(last) >= 20)
        && LAST_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        OK.store(vmstat_headroom().unwrap_or(false), Ordering::Relaxed);
    }
    OK.load(Ordering::Relaxed)
}

/// Whether this process runs under a cgroup memory limit: its dirty pages
/// are then throttled against the cgroup's limit, which /proc/vmstat does
/// not show, so inline writes stay off.
fn memory_limited() -> bool {
    static LIMITED: OnceLock<bool> = OnceLock::new();
    *LIMITED.get_or_init(|| {
        std::fs::read_to_string("/proc/self/cgroup")
            .is_ok_and(|groups| cgroup_memory_limited(&groups, |p| std::fs::read_to_string(p).ok()))
    })
}

/// [`memory_limited`] over `/proc/self/cgroup`'s text, reading cgroup
/// files through `read`.
fn cgroup_memory_limited(groups: &str, read: impl Fn(&str) -> Option<String>) -> bool {
    groups.lines().any(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if controllers.is_empty() {
            // cgroup v2 (pure, or the unified part of a hybrid tree).
            ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
                .iter()
                .any(|root| {
                    read(&format!("{root}{path}/memory.max")).is_some_and(|v| v.trim() != "max")
                })
        } else if controllers.split(',').any(|c| c == "memory") {
            read(&format!(
                "/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"
            ))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|v| v < 1 << 62)
        } else {
            false
        }
    })
}

fn vmstat_headroom() -> Option<bool> {
    if memory_limited() {
        return Some(false);
    }
    let text = std::fs::read_to_string("/proc/vmstat").ok()?;
    let (mut dirty, mut writeback, mut threshold) = (None, None, None);
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(k), Some(v)) = (f.next(), f.next().and_then(|v| v.parse::<u64>().ok())) else {
            continue;
        };
        match k {
            "nr_dirty" => dirty = Some(v),
            "nr_writeback" => writeback = Some(v),
            "nr_dirty_background_threshold" => threshold = Some(v),
            _ => {}
        }
    }
    Some(dirty? + writeback? < threshold? / 2)
}

/// ext4 refuses RWF_NOWAIT on buffered writes; knowing it at open lets
/// every write path (not only the first plain write) choose at once.
fn buffered_nowait_unsupported(file: &File) -> bool {
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;
    // SAFETY: fstatfs fills the zeroed struct we pass for our own fd.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    rc == 0 && st.f_type as i64 == EXT4_SUPER_MAGIC
}

const PAGE: u64 = 4096;

/// Counts an operation that holds the inode lock across I/O.
struct Exclusive<'a>(&'a AtomicU32);

impl<'a> Exclusive<'a> {
    fn new(c: &'a AtomicU32) -> Self {
        c.fetch_add(1, Ordering::SeqCst);
        Self(c)
    }
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One `preadv2`/`pwritev2` with flags; the byte count or the OS error.
fn rw2(
    fd: i32,
    write: bool,
    buf: *const u8,
    len: usize,
    offset: u64,
    flags: i32,
) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: iov describes a live buffer of `len` bytes owned by the caller.
    let n = unsafe {
        if write {
            libc::pwritev2(fd, &iov, 1, offset as libc::off_t, flags)
        } else {
            libc::preadv2(fd, &iov, 1, offset as libc::off_t, flags)
        }
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn nowait_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS)
    )
}

impl FileBackend {
    /// Whether `path` is a block device (then opened with
    /// [`FileBackend::open_block_device`]).
    pub fn is_block_device(path: &Path) -> bool {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
    }

    /// Opens an existing block device or file (never creates one).
    pub fn open_existing(path: &Path) -> io::Result<Self> {
        if Self::is_block_device(path) {
            return Self::open_block_device(path);
        }
        if !path.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such file", path.display()),
            ));
        }
        Self::open_or_create(path, 0)
    }

    /// Opens `path`, creating a sparse file of `size` bytes if it is missing.
    /// An existing file shorter than `size` is grown; a longer one is kept.
    pub fn open_or_create(path: &Path, size: u64) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let meta = file.metadata()?;
        if meta.len() < size {
            file.set_len(size)?;
            // Make the new size itself durable.
            file.sync_all()?;
        }
        let len = file.metadata()?.len();
        let nowait_writes = !buffered_nowait_unsupported(&file);
        Ok(Self {
            file,
            path: path.to_path_buf(),
            len: RwLock::new(len),
            block_device: false,
            nowait_reads: AtomicBool::new(true),
            nowait_writes: AtomicBool::new(nowait_writes),
            exclusive_ops: AtomicU32::new(0),
        })
    }

    /// Opens a raw block device.
    pub fn open_block_device(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer we pass.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), 0x8008_1272, &mut size as *mut u64) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            len: RwLock::new(size),
            block_device: true,
            nowait_reads: AtomicBool::new(true),
            nowait_writes: AtomicBool::new(true),
            exclusive_ops: AtomicU32::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Backend for FileBackend {
    fn len(&self) -> u64 {
        *self.len.read()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        if !fua {
            return self.file.write_all_at(buf, offset);
        }
        // RWF_DSYNC makes just this write durable, without flushing others.
        let mut done = 0usize;
        while done < buf.len() {
            let iov = libc::iovec {
                iov_base: buf[done..].as_ptr() as *mut libc::c_void,
                iov_len: buf.len() - done,
            };
            // SAFETY: iov points into `buf`, which outlives the call.
            let n = unsafe {
                libc::pwritev2(
                    self.file.as_raw_fd(),
                    &iov,
                    1,
                    (offset + done as u64) as libc::off_t,
                    libc::RWF_DSYNC,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    self.file.write_all_at(&buf[done..], offset + done as u64)?;
                    return self.file.sync_data();
                }
                return Err(err);
            }
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += n as usize;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn try_read_nowait(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        if !self.nowait_reads.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let fd = self.file.as_raw_fd();
        match rw2(fd, false, buf.as_ptr(), buf.len(), offset, libc::RWF_NOWAIT) {
            // A short read (partly cached) is redone whole by read_at.
            Ok(n) => Ok(n == buf.len()),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(false),
            Err(e) if nowait_unsupported(&e) => {
                self.nowait_reads.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn try_write_nowait(&self, offset: u64, buf: &[u8]) -> io::Result<usize> {
        if !self.nowait_writes.load(Ordering::Relaxed) {
            // No RWF_NOWAIT for buffered writes here (ext4): write inline
            // only when nothing suggests the write would wait.
            if self.write_inline_ok(offset, buf.len()) {
                self.file.write_all_at(buf, offset)?;
                return Ok(buf.len());
            }
            return Ok(0);
        }
        let fd = self.file.as_raw_fd();
        match rw2(fd, true, buf.as_ptr(), buf.len(), offset, libc::RWF_NOWAIT) {
            Ok(n) => Ok(n),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(0),
            Err(e) if nowait_unsupported(&e) => {
                self.nowait_writes.store(false, Ordering::Relaxed);
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    fn write_inline_ok(&self, offset: u64, len: usize) -> bool {
        // With RWF_NOWAIT the kernel decides (try_write_nowait).
        if self.nowait_writes.load(Ordering::Relaxed)
            || len == 0
            || len > INLINE_WRITE_MAX
            || self.exclusive_ops.load(Ordering::SeqCst) != 0
            || !writeback_headroom()
        {
            return false;
        }
        // A partial page is read in first unless it is cached: check the
        // edge pages without blocking.
        let end = offset + len as u64;
        let cached = |at: u64| self.try_read_nowait(at, &mut [0u8; 1]).unwrap_or(false);
        (offset.is_multiple_of(PAGE) || cached(offset - offset % PAGE))
            && (end.is_multiple_of(PAGE) || cached(end - end % PAGE))
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let _x = Exclusive::new(&self.exclusive_ops);
        let fd = self.file.as_raw_fd();
        if self.block_device {
            let range = [offset, len];
            // SAFETY: BLKDISCARD reads two u64s from the pointer.
            let rc = unsafe { libc::ioctl(fd, 0x1277, range.as_ptr()) };
            if rc != 0 {
                // Devices without discard: write zeros so reads stay defined.
                return write_zeros(&self.file, offset, len);
            }
            return Ok(());
        }
        // SAFETY: plain fallocate on our own descriptor.
        let rc = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            return write_zeros(&self.file, offset, len);
        }
        Ok(())
    }

    fn grow(&self, new_len: u64) -> io::Result<()> {
        let _x = Exclusive::new(&self.exclusive_ops);
        let mut len = self.len.write();
        if self.block_device || new_len <= *len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "backend cannot grow to that size",
            ));
        }
        self.file.set_len(new_len)?;
        self.file.sync_all()?;
        *len = new_len;
        Ok(())
    }

    fn allocated(&self, offset: u64, len: u64) -> io::Result<Vec<(std::ops::Range<u64>, bool)>> {
        let end = offset.saturating_add(len);
        if self.block_device {
            return Ok(vec![(offset..end, true)]);
        }
        let fd = self.file.as_raw_fd();
        let seek = |at: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
            // SAFETY: lseek on our own descriptor; no memory is passed.
            let r = unsafe { libc::lseek(fd, at as libc::off_t, whence) };
            if r < 0 {
                let e = io::Error::last_os_error();
                // ENXIO: no more data after `at`.
                if e.raw_os_error() == Some(libc::ENXIO) {
                    return Ok(None);
                }
                return Err(e);
            }
            Ok(Some(r as u64))
        };
        let mut out = Vec::new();
        let mut at = offset;
        // Bounded: each step advances, and runs are capped for the caller.
        while at < end && out.len() < 4096 {
            let data = match seek(at, libc::SEEK_DATA) {
                Ok(d) => d.unwrap_or(end).min(end),
                // Filesystems without SEEK_DATA: all data.
                Err(_) => {
                    out.push((at..end, true));
                    return Ok(out);
                }
            };
            if data > at {
                out.push((at..data, false));
            }
            if data >= end {
                break;
            }
            let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
            out.push((data..hole, true));
            at = hole;
        }
        if at < end && out.len() >= 4096 {
            out.push((at..end, true));
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        let kind = if self.block_device { "block" } else { "file" };
        format!("{kind}:{}", self.path.display())
    }
}

fn write_zeros(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Volatile memory backend, for tests and scratch volumes.
#[derive(Debug)]
pub struct MemBackend {
    data: RwLock<Vec<u8>>,
}

impl MemBackend {
    pub fn new(size: u64) -> io::Result<Self> {
        let size = usize::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size too large"))?;
        Ok(Self {
            data: RwLock::new(vec![0u8; size]),
        })
    }
}

fn mem_range(len: usize, offset: u64, n: usize) -> io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    let end = start.checked_add(n).ok_or(io::ErrorKind::InvalidInput)?;
    if end > len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "beyond end"));
    }
    Ok(start..end)
}

impl Backend for MemBackend {
    fn len(&self) -> u64 {
        self.data.read().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let data = self.data.read();
        let r = mem_range(data.len(), offset, buf.len())?;
        buf.copy_from_slice(&data[r]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8], _fua: bool) -> io::Result<()> {
        let mut data = self.data.write();
        let r = mem_range(data.len(), offset, buf.len())?;
        data[r].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut data = self.data.write();
        let n = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        let r = mem_range(data.len(), offset, n)?;
        data[r].fill(0);
        Ok(())
    }

    fn grow(&self, new_len: u64) -> io::Result<()> {
        let n = usize::try_from(new_len).map_err(|_| io::ErrorKind::InvalidInput)?;
        let mut data = self.data.write();
        if n <= data.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot shrink"));
        }
        data.resize(n, 0);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("memory:{}", self.len())
    }
}

/// A backend wrapper that injects faults, for tests: failing writes or
/// reads, added latency, and "drop" mode, where writes report success but
/// never reach the store (a crash between legs, seen from the other leg).
#[derive(Debug)]
pub struct FaultyBackend {
    inner: std::sync::Arc<dyn Backend>,
    fail_writes: AtomicBool,
    fail_reads: AtomicBool,
    drop_writes: AtomicBool,
    latency_us: AtomicU64,
    writes: AtomicU64,
}

impl FaultyBackend {
    pub fn new(inner: std::sync::Arc<dyn Backend>) -> Self {
        Self {
            inner,
            fail_writes: AtomicBool::new(false),
            fail_reads: AtomicBool::new(false),
            drop_writes: AtomicBool::new(false),
            latency_us: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    pub fn set_fail_writes(&self, on: bool) {
        self.fail_writes.store(on, Ordering::SeqCst);
    }

    pub fn set_fail_reads(&self, on: bool) {
        self.fail_reads.store(on, Ordering::SeqCst);
    }

    pub fn set_drop_writes(&self, on: bool) {
        self.drop_writes.store(on, Ordering::SeqCst);
    }

    pub fn set_latency(&self, d: std::time::Duration) {
        self.latency_us
            .store(d.as_micros() as u64, Ordering::SeqCst);
    }

    /// Writes that reached the store.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    fn delay(&self) {
        let us = self.latency_us.load(Ordering::Relaxed);
        if us > 0 {
            std::thread::sleep(std::time::Duration::from_micros(us));
        }
    }
}

fn injected() -> io::Error {
    io::Error::other("injected fault")
}

impl Backend for FaultyBackend {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.delay();
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        self.delay();
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(injected());
        }
        if self.drop_writes.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write_at(offset, buf, fua)
    }

    fn flush(&self) -> io::Result<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(injected());
        }
        if self.drop_writes.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.discard(offset, len)
    }

    fn grow(&self, new_len: u64) -> io::Result<()> {
        self.inner.grow(new_len)
    }

    fn describe(&self) -> String {
        format!("faulty:{}", self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_backend_roundtrip_and_discard() {
        let dir = tempfile::tempdir().unwrap();
        let b = FileBackend::open_or_create(&dir.path().join("v.img"), 1 << 20).unwrap();
        assert_eq!(b.len(), 1 << 20);
        b.write_at(4096, &[7u8; 4096], true).unwrap();
        let mut buf = [0u8; 4096];
        b.read_at(4096, &mut buf).unwrap();
        assert!(buf.iter().all(|&x| x == 7));
        b.discard(4096, 4096).unwrap();
        b.read_at(4096, &mut buf).unwrap();
        assert!(buf.iter().all(|&x| x == 0));
        assert!(b.read_at((1 << 20) - 10, &mut buf).is_err());
    }

    #[test]
    fn nowait_paths_agree_with_blocking_ones() {
        let dir = tempfile::tempdir().unwrap();
        let b = FileBackend::open_or_create(&dir.path().join("n.img"), 1 << 20).unwrap();
        let data: Vec<u8> = (0..8192).map(|i| (i % 251) as u8).collect();
        let done = b.try_write_nowait(8192, &data).unwrap();
        assert!(done <= data.len());
        b.write_at(8192 + done as u64, &data[done..], false)
            .unwrap();
        let mut via_nowait = vec![0u8; 8192];
        // Just written, so cached: a kernel with RWF_NOWAIT serves it.
        let hit = b.try_read_nowait(8192, &mut via_nowait).unwrap();
        let mut via_read = vec![0u8; 8192];
        b.read_at(8192, &mut via_read).unwrap();
        assert_eq!(via_read, data);
        if hit {
            assert_eq!(via_nowait, data);
        }
        // Past the end is never a successful non-blocking read.
        let mut tail = vec![0u8; 4096];
        assert!(!b.try_read_nowait((1 << 20) - 100, &mut tail).unwrap());
    }

    #[test]
    fn mem_backend_bounds() {
        let b = MemBackend::new(8192).unwrap();
        assert!(b.write_at(8000, &[1u8; 512], false).is_err());
        b.write_at(0, &[1u8; 512], false).unwrap();
        let mut buf = [0u8; 512];
        b.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [1u8; 512]);
    }

    #[test]
    fn cgroup_memory_limits_are_found_in_v1_and_v2() {
        let files = |pairs: &'static [(&'static str, &'static str)]| {
            move |p: &str| pairs.iter().find(|f| f.0 == p).map(|f| f.1.to_string())
        };
        let v1 = "4:memory:/svc\n0::/\n";
        assert!(!cgroup_memory_limited(
            v1,
            files(&[(
                "/sys/fs/cgroup/memory/svc/memory.limit_in_bytes",
                "9223372036854771712\n"
            )])
        ));
        assert!(cgroup_memory_limited(
            v1,
            files(&[(
                "/sys/fs/cgroup/memory/svc/memory.limit_in_bytes",
                "1073741824\n"
            )])
        ));
        let v2 = "0::/user.slice/app\n";
        assert!(!cgroup_memory_limited(
            v2,
            files(&[("/sys/fs/cgroup/user.slice/app/memory.max", "max\n")])
        ));
        assert!(cgroup_memory_limited(
            v2,
            files(&[("/sys/fs/cgroup/user.slice/app/memory.max", "536870912\n")])
        ));
        assert!(!cgroup_memory_limited("1:cpu:/x\n", files(&[])));
    }
}
