//! The replicated file system on a real FUSE mount over a real 4-replica
//! cluster, used by ordinary programs: every case of a conformance suite
//! gives the same result (or errno) as on a local directory; after a copy
//! and a compile every replica computed the same state digest; and a
//! `kill -9` of the primary during a copy loses nothing.
//!
//! They need root and `/dev/fuse`; `.ci/run` runs them with
//! `cargo test -p palisade --test fs -- --ignored`.

mod common;

use common::{run_ok, wait_for, Scratch};
use palisade_testkit::scrape::metric;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
const N: usize = 4;

/// A cluster of file system replicas and a mount of it; all stopped and
/// unmounted when dropped.
struct Mounted {
    dir: Scratch,
    metrics_port: u16,
    replicas: Vec<Option<Child>>,
    mount: Option<Child>,
    /// More mounts of the same cluster: other clients.
    others: Vec<(PathBuf, Child)>,
}

impl Mounted {
    fn start(tag: &str) -> Mounted {
        let dir = Scratch::new("fs", tag);
        let ports = palisade_testkit::loopback::port_block(2 * N);
        run_ok(
            Command::new(BIN)
                .args(["keygen", "--replicas", "4", "--base-port", &ports.to_string(), "--out"])
                .arg(&*dir),
        );
        let mut m =
            Mounted { dir, metrics_port: ports + N as u16, replicas: Vec::new(), mount: None, others: Vec::new() };
        for i in 0..N {
            let r = m.replica(i);
            m.replicas.push(Some(r));
        }
        m.mount = Some(m.mount_at(&m.mnt(), "mount.log"));
        m
    }

    /// Starts `palisade fs mount` at `mnt` and waits until it is mounted.
    fn mount_at(&self, mnt: &Path, log: &str) -> Child {
        fs::create_dir(mnt).unwrap();
        let log = self.dir.join(log);
        let child = Command::new(BIN)
            .args(["fs", "mount", "--allow-other", "--config"])
            .arg(&*self.dir)
            .arg(mnt)
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for(
            "the mount",
            Duration::from_secs(60),
            || fs::read_to_string(&log).unwrap_or_default(),
            || fs::read_to_string("/proc/mounts").unwrap().contains(mnt.to_str().unwrap()),
        );
        child
    }

    /// A second mount of the cluster, another client, at `name`.
    fn another_mount(&mut self, name: &str) -> PathBuf {
        let mnt = self.dir.join(name);
        let child = self.mount_at(&mnt, &format!("{name}.log"));
        self.others.push((mnt.clone(), child));
        mnt
    }

    fn replica(&self, i: usize) -> Child {
        let log = OpenOptions::new().create(true).append(true).open(self.dir.join(format!("replica-{i}.log"))).unwrap();
        Command::new(BIN)
            .args(["replica", "--service", "fs", "--id", &i.to_string(), "--config"])
            .arg(&*self.dir)
            .args(["--metrics-addr", &self.metrics(i)])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn mnt(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    fn metrics(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.metrics_port + i as u16)
    }

    fn metric(&self, i: usize, name: &str) -> f64 {
        metric(&self.metrics(i), name).unwrap_or(-1.0)
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.replicas[i].take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn logs(&self) -> String {
        (0..N).map(|i| fs::read_to_string(self.dir.join(format!("replica-{i}.log"))).unwrap_or_default()).collect()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new(BIN).args(["fs", "umount"]).arg(self.mnt()).output();
        if let Some(mut m) = self.mount.take() {
            let _ = m.wait();
        }
        for (mnt, mut child) in self.others.drain(..) {
            let _ = Command::new(BIN).args(["fs", "umount"]).arg(&mnt).output();
            let _ = child.wait();
        }
        for i in 0..N {
            self.kill(i);
        }
    }
}

/// Cargo's registry copy of the Lua sources (the benchmark's tree; a
/// dependency of the harness, so present once the workspace is built).
fn lua_sources() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap()).join(".cargo"));
    let mut found: Vec<PathBuf> = fs::read_dir(home.join("registry/src"))
        .unwrap()
        .flatten()
        .flat_map(|index| fs::read_dir(index.path()).unwrap().flatten().map(|e| e.path()))
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("lua-src-"))
        .collect();
    found.sort();
    found.pop().expect("the lua-src crate in Cargo's registry")
}

fn show<T: std::fmt::Debug>(r: std::io::Result<T>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("errno {:?}", e.raw_os_error()),
    }
}

/// The conformance suite: each step's name and outcome, on `b`.
fn suite(b: &Path) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut step = |name: &'static str, outcome: String| out.push((name, outcome));
    let (a, d) = (b.join("a"), b.join("d"));
    let open_rw = |p: &Path| OpenOptions::new().write(true).open(p);
    step("create and write", show(fs::write(&a, b"hello")));
    step("read", show(fs::read_to_string(&a)));
    step("append", show(OpenOptions::new().append(true).open(&a).and_then(|mut f| f.write_all(b" world"))));
    step(
        "overwrite in the middle",
        show(open_rw(&a).and_then(|mut f| f.seek(SeekFrom::Start(2)).and(f.write_all(b"XY")))),
    );
    step("read after writes", show(fs::read_to_string(&a)));
    step("extend with zeros", show(open_rw(&a).and_then(|f| f.set_len(100_000))));
    step("a sparse tail reads as zeros", show(fs::read(&a).map(|v| (v.len(), v[50_000], v[99_999], v[..4].to_vec()))));
    step("truncate", show(open_rw(&a).and_then(|f| f.set_len(3))));
    step("read after truncating", show(fs::read_to_string(&a)));
    step("truncate on open", show(File::create(&a).and_then(|mut f| f.write_all(b"new"))));
    step("read after O_TRUNC", show(fs::read_to_string(&a)));
    step("exclusive create of an existing file", show(OpenOptions::new().write(true).create_new(true).open(&a)));
    step("mkdir", show(fs::create_dir(&d)));
    step("mkdir again", show(fs::create_dir(&d)));
    step("a file in a missing directory", show(fs::write(b.join("missing/x"), b"")));
    step("open a directory for writing", show(open_rw(&d)));
    step("open a missing file", show(File::open(b.join("missing"))));
    step("mkdir under a file", show(fs::create_dir(a.join("x"))));
    step("file in a directory", show(fs::write(d.join("f"), b"in d")));
    step("rmdir a non-empty directory", show(fs::remove_dir(&d)));
    step("unlink a directory", show(fs::remove_file(&d)));
    step("rmdir a file", show(fs::remove_dir(&a)));
    step("directory links", show(fs::metadata(b).map(|m| m.nlink())));
    step("mkdir a subdirectory", show(fs::create_dir(d.join("sub"))));
    step("links after a subdirectory", show(fs::metadata(&d).map(|m| m.nlink())));
    step("rename a directory into itself", show(fs::rename(&d, d.join("sub/inside"))));
    step("rename a file over a directory", show(fs::rename(&a, d.join("sub"))));
    step("rename a directory over a file", show(fs::rename(d.join("sub"), &a)));
    step("rename a directory over a non-empty one", show(fs::create_dir(b.join("e")).and(fs::rename(b.join("e"), &d))));
    step("rename a directory over an empty one", show(fs::rename(&d, b.join("e"))));
    step("the moved tree", show(fs::read_to_string(b.join("e/f"))));
    step("rename a file over a file", show(fs::write(b.join("g"), b"g").and(fs::rename(b.join("g"), &a))));
    step("the replaced file", show(fs::read_to_string(&a)));
    step("hard link", show(fs::hard_link(&a, b.join("l"))));
    step("links of a linked file", show(fs::metadata(&a).map(|m| m.nlink())));
    step("a write through one name", show(fs::write(b.join("l"), b"via l")));
    step("is read through the other", show(fs::read_to_string(&a)));
    step("hard link to a directory", show(fs::hard_link(b.join("e"), b.join("le"))));
    step("unlink one name", show(fs::remove_file(b.join("l")).and(fs::metadata(&a).map(|m| m.nlink()))));
    step("symlink", show(std::os::unix::fs::symlink("a", b.join("s"))));
    step("readlink", show(fs::read_link(b.join("s"))));
    step("read through a symlink", show(fs::read_to_string(b.join("s"))));
    step("a symlink is a symlink", show(fs::symlink_metadata(b.join("s")).map(|m| m.file_type().is_symlink())));
    step("a dangling symlink", show(std::os::unix::fs::symlink("nowhere", b.join("t")).and(fs::read(b.join("t")))));
    step("chmod", show(fs::set_permissions(&a, fs::Permissions::from_mode(0o640))));
    step("mode", show(fs::metadata(&a).map(|m| m.permissions().mode() & 0o7777)));
    let when = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    step("set the modification time", show(open_rw(&a).and_then(|f| f.set_modified(when))));
    step("modification time", show(fs::metadata(&a).and_then(|m| m.modified())));
    step("a name too long", show(fs::write(b.join("n".repeat(256)), b"")));
    step("a name as long as allowed", show(fs::write(b.join("n".repeat(255)), b"")));
    // Permissions, for a user who is not root.
    fs::write(b.join("private"), b"secret").unwrap();
    fs::set_permissions(b.join("private"), fs::Permissions::from_mode(0o600)).unwrap();
    let nobody = Command::new("runuser").args(["-u", "nobody", "--", "cat"]).arg(b.join("private")).output().unwrap();
    step(
        "another user reads a 0600 file",
        format!("{} {}", nobody.status, String::from_utf8_lossy(&nobody.stderr).contains("Permission denied")),
    );
    let nobody = Command::new("runuser").args(["-u", "nobody", "--", "cat"]).arg(&a).output().unwrap();
    step("another user reads a 0640 file", format!("{}", nobody.status));
    // A file of tens of MiB, and a directory of thousands of files.
    let big: Vec<u8> = (0..24 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    step("write 24 MiB", show(fs::write(b.join("big"), &big)));
    step("read 24 MiB back", show(fs::read(b.join("big")).map(|v| v == big)));
    step(
        "a read at an offset",
        show(File::open(b.join("big")).and_then(|mut f| {
            use std::io::Read;
            f.seek(SeekFrom::Start(20 << 20))?;
            let mut buf = vec![0; 100];
            f.read_exact(&mut buf)?;
            Ok(buf == big[20 << 20..(20 << 20) + 100])
        })),
    );
    let many = b.join("many");
    fs::create_dir(&many).unwrap();
    step(
        "create 2000 files",
        show((0..2000).try_for_each(|i| fs::write(many.join(format!("file-{i:04}")), i.to_string()))),
    );
    step(
        "list them",
        show(fs::read_dir(&many).and_then(|r| r.map(|e| e.map(|e| e.file_name())).collect::<Result<Vec<_>, _>>()).map(
            |mut v| {
                v.sort();
                (v.len(), v[0].clone(), v[1999].clone())
            },
        )),
    );
    step(
        "remove them",
        show((0..2000).try_for_each(|i| fs::remove_file(many.join(format!("file-{i:04}")))).and(fs::remove_dir(&many))),
    );
    let mut names: Vec<String> =
        fs::read_dir(b).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    step("the names left", format!("{names:?}"));
    out
}

#[test]
#[ignore = "needs root and /dev/fuse; .ci/run runs it"]
fn a_mounted_cluster_answers_like_a_local_directory_and_every_replica_computes_the_same_state() {
    let m = Mounted::start("conformance");
    let local = m.dir.join("local");
    fs::create_dir(&local).unwrap();
    let mounted = m.mnt().join("suite");
    fs::create_dir(&mounted).unwrap();
    let want = suite(&local);
    let got = suite(&mounted);
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(g, w, "step `{}`: the mount answered differently from a local directory", w.0);
    }
    assert_eq!(got.len(), want.len());
    // A copy and a compile, as the Andrew benchmark does them.
    let src = lua_sources().join("lua-5.4.9");
    run_ok(Command::new("cp").arg("-r").arg(&src).arg(m.mnt().join("lua")));
    run_ok(Command::new("diff").arg("-r").arg(&src).arg(m.mnt().join("lua")));
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("for f in *.c; do cc -O0 -w -c $f || exit 1; done && ar rcs liblua.a *.o")
            .current_dir(m.mnt().join("lua")),
    );
    assert!(fs::metadata(m.mnt().join("lua/liblua.a")).unwrap().len() > 100_000);
    // Every replica's state digest at a checkpoint after all of it: write
    // until every replica has a stable checkpoint past what it had
    // delivered, then none may have raised a divergence alarm, and none
    // may have fetched its state (which would have hidden one).
    let end = (0..N).map(|i| m.metric(i, "palisade_delivered_seq")).fold(0.0, f64::max);
    let mut k = 0;
    wait_for(
        "a checkpoint after the workload",
        Duration::from_secs(60),
        || m.logs(),
        || {
            k += 1;
            fs::write(m.mnt().join("tick"), k.to_string()).unwrap();
            (0..N).all(|i| m.metric(i, "palisade_stable_seq") >= end)
        },
    );
    for i in 0..N {
        assert_eq!(m.metric(i, "palisade_alarms_total"), 0.0, "replica {i} diverged:\n{}", m.logs());
        assert_eq!(m.metric(i, "palisade_state_transfers_total"), 0.0, "replica {i} fetched its state");
    }
}

#[test]
#[ignore = "needs root and /dev/fuse; .ci/run runs it"]
fn a_copy_survives_a_killed_primary_and_every_byte_arrives() {
    let mut m = Mounted::start("kill");
    let src = lua_sources();
    let dst = m.mnt().join("copy");
    let mut cp = Command::new("cp").arg("-r").arg(&src).arg(&dst).spawn().unwrap();
    // Once part of the tree has arrived, kill the primary.
    wait_for("the copy to start", Duration::from_secs(30), String::new, || {
        fs::read_dir(&dst).map(|r| r.count() >= 3).unwrap_or(false)
    });
    let primary = (0..N).find(|i| m.metric(*i, "palisade_is_primary") == 1.0).expect("a primary");
    m.kill(primary);
    assert!(cp.wait().unwrap().success(), "cp failed:\n{}", m.logs());
    run_ok(Command::new("diff").arg("-r").arg(&src).arg(&dst));
    let others: Vec<usize> = (0..N).filter(|i| *i != primary).collect();
    assert!(others.iter().all(|i| m.metric(*i, "palisade_view") >= 1.0), "no view change:\n{}", m.logs());
    // And the mount keeps working, the killed replica back or not.
    fs::write(m.mnt().join("after"), b"still here").unwrap();
    m.replicas[primary] = Some(m.replica(primary));
    fs::write(m.mnt().join("after"), b"and again").unwrap();
    assert_eq!(fs::read_to_string(m.mnt().join("after")).unwrap(), "and again");
}

#[test]
#[ignore = "needs root and /dev/fuse; .ci/run runs it"]
fn a_second_client_reads_at_open_what_the_first_wrote_and_keeps_its_cache_otherwise() {
    let mut m = Mounted::start("close-to-open");
    let a = m.mnt();
    let b = m.another_mount("mnt-b");
    let (fa, fb) = (a.join("shared"), b.join("shared"));
    fs::write(&fa, b"version one").unwrap();
    assert_eq!(fs::read(&fb).unwrap(), b"version one");
    // B has the pages now. Rewrites of the same size, at once (within a
    // millisecond, in one batch or not), and a longer one: B's next open
    // sees each.
    for text in ["version two", "version 3!!", "version four, which is longer"] {
        fs::write(&fa, text).unwrap();
        assert_eq!(fs::read_to_string(&fb).unwrap(), text, "B read a stale copy after A closed");
    }
    // A write in place, through an open handle, after B cached the file.
    let mut f = OpenOptions::new().write(true).open(&fa).unwrap();
    f.seek(SeekFrom::Start(8)).unwrap();
    f.write_all(b"FOUR").unwrap();
    drop(f);
    assert_eq!(fs::read_to_string(&fb).unwrap(), "version FOUR, which is longer");
    // Unchanged, it reads the same again (from the kept pages), and B's own
    // writes are what A reads.
    assert_eq!(fs::read_to_string(&fb).unwrap(), "version FOUR, which is longer");
    fs::write(&fb, b"from b").unwrap();
    assert_eq!(fs::read_to_string(&fa).unwrap(), "from b");
    // Appends from both, each within a second of the other's: B's kernel
    // still caches the size its own append left, yet B's next append lands
    // after A's, at the end of the file on the cluster.
    let log = |dir: &Path, text: &str| {
        OpenOptions::new().append(true).create(true).open(dir.join("log")).unwrap().write_all(text.as_bytes()).unwrap()
    };
    log(&b, "b1 ");
    log(&a, "a1 ");
    log(&b, "b2 ");
    log(&a, "a2");
    assert_eq!(fs::read_to_string(b.join("log")).unwrap(), "b1 a1 b2 a2");
    assert_eq!(fs::read_to_string(a.join("log")).unwrap(), "b1 a1 b2 a2");
    // Removed by A: B's open fails, its name cache notwithstanding.
    fs::remove_file(&fa).unwrap();
    assert!(fs::read(&fb).is_err(), "B opened a file A removed");
}

#[test]
#[ignore = "needs root and /dev/fuse; .ci/run runs it"]
fn held_back_writes_report_their_errors_at_close_and_fsync() {
    use std::os::fd::IntoRawFd;
    let m = Mounted::start("write-behind");
    // Past the largest file the service allows (4 GiB): the kernel lets the
    // write through, the mount holds it back, the cluster refuses it.
    let beyond = 5u64 << 30;
    let mut f = File::create(m.mnt().join("closed")).unwrap();
    f.seek(SeekFrom::Start(beyond)).unwrap();
    f.write_all(b"x").unwrap();
    let fd = f.into_raw_fd();
    // SAFETY: a descriptor this test owns, closed once.
    let closed = unsafe { libc::close(fd) };
    assert_eq!((closed, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EFBIG)));
    let mut f = File::create(m.mnt().join("synced")).unwrap();
    f.write_all(b"kept").unwrap();
    f.seek(SeekFrom::Start(beyond)).unwrap();
    f.write_all(b"x").unwrap();
    assert_eq!(f.sync_all().unwrap_err().raw_os_error(), Some(libc::EFBIG));
    drop(f);
    // What the cluster accepted is there; what it refused is not.
    assert_eq!(fs::read(m.mnt().join("synced")).unwrap(), b"kept");
    assert_eq!(fs::metadata(m.mnt().join("closed")).unwrap().len(), 0);
    // Writes held back are what a reader on the same mount sees, at once.
    let mut f = File::create(m.mnt().join("growing")).unwrap();
    f.write_all(b"abc").unwrap();
    assert_eq!(fs::metadata(m.mnt().join("growing")).unwrap().len(), 3);
    assert_eq!(fs::read(m.mnt().join("growing")).unwrap(), b"abc");
    f.write_all(b"def").unwrap();
    assert_eq!(fs::read(m.mnt().join("growing")).unwrap(), b"abcdef");
}
