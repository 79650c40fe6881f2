//! The directory a replica's files live in, behind a small trait: the real
//! file system for a running replica, and an in-memory disk that loses
//! unsynced writes, tears writes and rots sectors for the simulator and the
//! tests, so that the log and snapshot code they check is the code users run.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Files by name in one flat directory. Every method takes `&self`: the
/// log's writer and the snapshot writer share one directory.
pub trait Dir: Send + Sync + 'static {
    /// The names of the files present.
    fn list(&self) -> io::Result<Vec<String>>;
    /// A file's length in bytes.
    fn len(&self, name: &str) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end.
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Creates (or empties) `name` with `preallocate` zero bytes reserved,
    /// so that later writes into it do not need new blocks.
    fn create(&self, name: &str, preallocate: u64) -> io::Result<()>;
    /// Writes `data` at `offset`; durable only after [`Dir::sync`].
    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Cuts `name` to `len` bytes and zero-fills it back to `fill` bytes.
    fn truncate(&self, name: &str, len: u64, fill: u64) -> io::Result<()>;
    /// Makes every write to `name` durable (`fdatasync`).
    fn sync(&self, name: &str) -> io::Result<()>;
    /// Renames atomically and durably (the directory is synced).
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes `name` (durably: the directory is synced).
    fn remove(&self, name: &str) -> io::Result<()>;
}

/// A directory of the real file system. Open files are kept, so that a
/// group commit costs one `pwrite` and one `fdatasync`.
pub struct FsDir {
    root: PathBuf,
    open: Mutex<BTreeMap<String, Arc<File>>>,
    lock: Mutex<Option<File>>,
}

impl FsDir {
    /// Opens `root`, creating it if needed.
    pub fn open(root: &Path) -> io::Result<FsDir> {
        std::fs::create_dir_all(root)?;
        Ok(FsDir { root: root.to_path_buf(), open: Mutex::new(BTreeMap::new()), lock: Mutex::new(None) })
    }

    /// Takes the directory for this process alone (an advisory lock on
    /// `LOCK`, held until the `FsDir` is dropped): two replicas writing one
    /// log would destroy it.
    pub fn lock(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(self.root.join("LOCK"))?;
        // SAFETY: plain syscall on an open descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(io::Error::other("another process is using this data directory"));
        }
        *self.lock.lock() = Some(f);
        Ok(())
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn file(&self, name: &str) -> io::Result<Arc<File>> {
        let mut open = self.open.lock();
        if let Some(f) = open.get(name) {
            return Ok(f.clone());
        }
        let f = Arc::new(OpenOptions::new().read(true).write(true).open(self.root.join(name))?);
        open.insert(name.to_string(), f.clone());
        Ok(f)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.root)?.sync_all()
    }
}

impl Dir for FsDir {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(&self.root)? {
            let e = e?;
            if e.file_type()?.is_file() {
                names.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn len(&self, name: &str) -> io::Result<u64> {
        Ok(self.file(name)?.metadata()?.len())
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let f = self.file(name)?;
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64)? {
                0 => break,
                n => done += n,
            }
        }
        Ok(done)
    }

    fn create(&self, name: &str, preallocate: u64) -> io::Result<()> {
        self.open.lock().remove(name);
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(self.root.join(name))?;
        if preallocate > 0 {
            reserve(&f, preallocate)?;
        }
        f.sync_all()?;
        self.sync_dir()?;
        self.open.lock().insert(name.to_string(), Arc::new(f));
        Ok(())
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file(name)?.write_all_at(data, offset)
    }

    fn truncate(&self, name: &str, len: u64, fill: u64) -> io::Result<()> {
        let f = self.file(name)?;
        f.set_len(len)?;
        if fill > len {
            f.set_len(fill)?;
        }
        f.sync_all()
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        self.file(name)?.sync_data()
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut open = self.open.lock();
        open.remove(from);
        open.remove(to);
        drop(open);
        std::fs::rename(self.root.join(from), self.root.join(to))?;
        self.sync_dir()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.open.lock().remove(name);
        std::fs::remove_file(self.root.join(name))?;
        self.sync_dir()
    }
}

/// Reserves `len` bytes of real blocks (a sparse file would allocate, and
/// could run out of space, at the first write into each block).
fn reserve(f: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len_i64 = i64::try_from(len).map_err(|_| io::Error::other("file too large"))?;
    // SAFETY: plain syscall on an open descriptor we own; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len_i64) };
    match rc {
        0 => Ok(()),
        // File systems without fallocate (tmpfs on old kernels, some
        // overlays): fall back to a sparse file of the right length.
        libc::EOPNOTSUPP | libc::EINVAL => f.set_len(len),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// How a simulated crash treats writes that were not yet synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashKind {
    /// All of them are lost.
    LoseUnsynced,
    /// A prefix of them survives, cut at an arbitrary byte picked from
    /// `seed` (a torn write).
    Torn {
        /// Where the tear falls, deterministically.
        seed: u64,
    },
}

#[derive(Clone, Default)]
struct MemFile {
    /// What a crash leaves.
    synced: Vec<u8>,
    /// What reads see.
    current: Vec<u8>,
    /// Writes since the last sync, in order.
    pending: Vec<(u64, Vec<u8>)>,
}

#[derive(Default)]
struct MemState {
    files: BTreeMap<String, MemFile>,
    full: bool,
    read_only: bool,
    syncs: u64,
}

/// An in-memory disk with faults: a crash loses or tears unsynced writes,
/// [`MemDir::corrupt`] flips a byte as a rotten sector would, and the disk
/// can be made full or read-only. Clones share the disk.
#[derive(Clone, Default)]
pub struct MemDir {
    state: Arc<Mutex<MemState>>,
}

impl MemDir {
    /// An empty disk.
    pub fn new() -> MemDir {
        MemDir::default()
    }

    /// The machine crashed: what was not synced is lost or torn.
    pub fn crash(&self, kind: CrashKind) {
        let mut st = self.state.lock();
        let mut seed = match kind {
            CrashKind::LoseUnsynced => None,
            CrashKind::Torn { seed } => Some(seed),
        };
        for f in st.files.values_mut() {
            let mut durable = f.synced.clone();
            if let Some(s) = seed.as_mut() {
                let total: usize = f.pending.iter().map(|(_, d)| d.len()).sum();
                if total > 0 {
                    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let mut keep = (*s >> 33) as usize % (total + 1);
                    for (off, data) in &f.pending {
                        let n = keep.min(data.len());
                        put(&mut durable, *off, &data[..n]);
                        keep -= n;
                    }
                }
            }
            f.current = durable.clone();
            f.synced = durable;
            f.pending.clear();
        }
    }

    /// Flips the bits of the byte at `offset` of `name`, in what reads see
    /// and what survives a crash.
    pub fn corrupt(&self, name: &str, offset: u64) {
        let mut st = self.state.lock();
        if let Some(f) = st.files.get_mut(name) {
            for v in [&mut f.current, &mut f.synced] {
                if let Some(b) = v.get_mut(offset as usize) {
                    *b ^= 0xff;
                }
            }
        }
    }

    /// From now on writes fail as on a full disk (or succeed again).
    pub fn set_full(&self, full: bool) {
        self.state.lock().full = full;
    }

    /// From now on writes fail as on a read-only file system.
    pub fn set_read_only(&self, read_only: bool) {
        self.state.lock().read_only = read_only;
    }

    /// How many syncs were made (group commit shows in this count).
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    /// A file's current bytes, for tests.
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        self.state.lock().files.get(name).map(|f| f.current.clone())
    }

    fn writable(st: &MemState) -> io::Result<()> {
        if st.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if st.full {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

fn put(v: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if v.len() < end {
        v.resize(end, 0);
    }
    v[offset as usize..end].copy_from_slice(data);
}

fn missing(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

impl Dir for MemDir {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state.lock().files.keys().cloned().collect())
    }

    fn len(&self, name: &str) -> io::Result<u64> {
        self.state.lock().files.get(name).map(|f| f.current.len() as u64).ok_or_else(|| missing(name))
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let st = self.state.lock();
        let f = st.files.get(name).ok_or_else(|| missing(name))?;
        let start = (offset as usize).min(f.current.len());
        let n = buf.len().min(f.current.len() - start);
        buf[..n].copy_from_slice(&f.current[start..start + n]);
        Ok(n)
    }

    fn create(&self, name: &str, preallocate: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        MemDir::writable(&st)?;
        let zeros = vec![0; preallocate as usize];
        st.files.insert(name.to_string(), MemFile { synced: zeros.clone(), current: zeros, pending: Vec::new() });
        Ok(())
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock();
        MemDir::writable(&st)?;
        let f = st.files.get_mut(name).ok_or_else(|| missing(name))?;
        put(&mut f.current, offset, data);
        f.pending.push((offset, data.to_vec()));
        Ok(())
    }

    fn truncate(&self, name: &str, len: u64, fill: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        MemDir::writable(&st)?;
        let f = st.files.get_mut(name).ok_or_else(|| missing(name))?;
        f.current.truncate(len as usize);
        f.current.resize(fill.max(len) as usize, 0);
        f.synced = f.current.clone();
        f.pending.clear();
        Ok(())
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        let mut st = self.state.lock();
        st.syncs += 1;
        let f = st.files.get_mut(name).ok_or_else(|| missing(name))?;
        f.synced = f.current.clone();
        f.pending.clear();
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut st = self.state.lock();
        MemDir::writable(&st)?;
        let f = st.files.remove(from).ok_or_else(|| missing(from))?;
        st.files.insert(to.to_string(), f);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut st = self.state.lock();
        MemDir::writable(&st)?;
        st.files.remove(name).map(|_| ()).ok_or_else(|| missing(name))
    }
}
