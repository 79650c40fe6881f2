use super::*;
use crate::fs::errno;

fn ctx(ms: u64) -> ExecContext {
    ExecContext { timestamp_ms: ms, ..crate::test_ctx() }
}

fn small() -> FsService {
    FsService::with_parts(FsLimits::default(), 16)
}

fn run(fs: &mut FsService, op: FsOp) -> FsResult {
    FsResult::decode(&fs.execute(&ctx(1000), &op.encode())).unwrap()
}

fn attr(fs: &mut FsService, op: FsOp) -> Attr {
    match run(fs, op) {
        FsResult::Attr(a) => a,
        other => panic!("expected attributes, got {other:?}"),
    }
}

fn err(fs: &mut FsService, op: FsOp) -> i32 {
    match run(fs, op) {
        FsResult::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn create(fs: &mut FsService, dir: Ino, name: &str) -> Attr {
    attr(fs, FsOp::Create { dir, name: b(name), mode: 0o644, uid: 7, gid: 8, exclusive: true })
}

fn mkdir(fs: &mut FsService, dir: Ino, name: &str) -> Attr {
    attr(fs, FsOp::Mkdir { dir, name: b(name), mode: 0o755, uid: 7, gid: 8 })
}

fn read(fs: &mut FsService, ino: Ino, offset: u64, len: u32) -> Bytes {
    match run(fs, FsOp::Read { ino, offset, len }) {
        FsResult::Data(d) => d,
        other => panic!("expected data, got {other:?}"),
    }
}

fn write(fs: &mut FsService, ino: Ino, offset: u64, data: &[u8]) -> FsResult {
    run(fs, FsOp::Write { ino, offset, data: Bytes::copy_from_slice(data) })
}

fn truncate(fs: &mut FsService, ino: Ino, size: u64) -> FsResult {
    run(fs, FsOp::SetAttr { ino, set: SetAttr { size: Some(size), ..SetAttr::default() } })
}

fn names(fs: &mut FsService, dir: Ino) -> Vec<String> {
    let mut out = Vec::new();
    let mut cookie = 0;
    loop {
        let FsResult::Entries { entries, more } = run(fs, FsOp::ReadDir { dir, cookie, max_bytes: 64 }) else {
            panic!("not a listing")
        };
        for e in &entries {
            out.push(String::from_utf8(e.name.to_vec()).unwrap());
            cookie = e.cookie;
        }
        if !more {
            return out;
        }
    }
}

/// File contents against a plain byte vector, through random writes and
/// truncations across block boundaries, sparse regions included.
#[test]
fn file_contents_match_a_byte_vector_through_random_writes_and_truncations() {
    let mut fs = small();
    let f = create(&mut fs, ROOT, "f").ino;
    let mut model: Vec<u8> = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    for step in 0..400 {
        if next(5) == 0 {
            let size = next(5 * BLOCK_BYTES);
            let FsResult::Attr(a) = truncate(&mut fs, f, size) else { panic!("a truncation answers attributes") };
            assert_eq!(a.size, size);
            model.resize(size as usize, 0);
        } else {
            let offset = next(4 * BLOCK_BYTES);
            let len = next(2 * BLOCK_BYTES) as usize + 1;
            let data: Vec<u8> = (0..len).map(|i| (step + i) as u8 | 1).collect();
            assert_eq!(write(&mut fs, f, offset, &data), FsResult::Written(len as u32));
            let end = offset as usize + len;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[offset as usize..end].copy_from_slice(&data);
        }
        assert_eq!(attr(&mut fs, FsOp::GetAttr { ino: f }).size, model.len() as u64, "step {step}");
        let whole = read(&mut fs, f, 0, u32::MAX);
        assert_eq!(whole.as_ref(), &model[..], "step {step}");
        let o = next(model.len() as u64 + 10);
        let part = read(&mut fs, f, o, 1000);
        let lo = (o as usize).min(model.len());
        assert_eq!(part.as_ref(), &model[lo..(lo + 1000).min(model.len())], "step {step}");
    }
}

#[test]
fn directories_count_links_and_refuse_what_posix_refuses() {
    let mut fs = small();
    let d = mkdir(&mut fs, ROOT, "d");
    assert_eq!(attr(&mut fs, FsOp::GetAttr { ino: ROOT }).nlink, 3);
    assert_eq!((d.nlink, d.uid, d.gid, d.mode, d.mtime_ns), (2, 7, 8, 0o755, 1000 * 1_000_000));
    let f = create(&mut fs, d.ino, "f");
    assert_eq!(
        err(&mut fs, FsOp::Create { dir: d.ino, name: b("f"), mode: 0, uid: 0, gid: 0, exclusive: true }),
        errno::EEXIST
    );
    // Without O_EXCL an existing file is the answer.
    let again = attr(&mut fs, FsOp::Create { dir: d.ino, name: b("f"), mode: 0, uid: 0, gid: 0, exclusive: false });
    assert_eq!(again.ino, f.ino);
    assert_eq!(err(&mut fs, FsOp::Rmdir { dir: ROOT, name: b("d") }), errno::ENOTEMPTY);
    assert_eq!(err(&mut fs, FsOp::Unlink { dir: ROOT, name: b("d") }), errno::EISDIR);
    assert_eq!(err(&mut fs, FsOp::Rmdir { dir: d.ino, name: b("f") }), errno::ENOTDIR);
    assert_eq!(err(&mut fs, FsOp::Mkdir { dir: f.ino, name: b("x"), mode: 0, uid: 0, gid: 0 }), errno::ENOTDIR);
    assert_eq!(err(&mut fs, FsOp::Lookup { dir: d.ino, name: b("nope") }), errno::ENOENT);
    assert_eq!(attr(&mut fs, FsOp::Lookup { dir: d.ino, name: b("..") }).ino, ROOT);
    // Hard links.
    let l = attr(&mut fs, FsOp::Link { ino: f.ino, dir: ROOT, name: b("hard") });
    assert_eq!(l.nlink, 2);
    assert_eq!(err(&mut fs, FsOp::Link { ino: d.ino, dir: ROOT, name: b("dl") }), errno::EPERM);
    write(&mut fs, f.ino, 0, b"shared");
    assert_eq!(run(&mut fs, FsOp::Unlink { dir: d.ino, name: b("f") }), FsResult::Done);
    assert_eq!(read(&mut fs, l.ino, 0, 100), b("shared"), "the other name keeps the data");
    assert_eq!(run(&mut fs, FsOp::Unlink { dir: ROOT, name: b("hard") }), FsResult::Done);
    assert_eq!(err(&mut fs, FsOp::GetAttr { ino: f.ino }), errno::ESTALE);
    assert_eq!(run(&mut fs, FsOp::Rmdir { dir: ROOT, name: b("d") }), FsResult::Done);
    assert_eq!(attr(&mut fs, FsOp::GetAttr { ino: ROOT }).nlink, 2);
    // Links.
    let s = attr(&mut fs, FsOp::Symlink { dir: ROOT, name: b("s"), target: b("a/b"), uid: 1, gid: 1 });
    assert_eq!((s.kind, s.size), (Kind::Symlink, 3));
    assert_eq!(run(&mut fs, FsOp::Readlink { ino: s.ino }), FsResult::Data(b("a/b")));
    assert_eq!(err(&mut fs, FsOp::Readlink { ino: ROOT }), errno::EINVAL);
    // Every inode and block is gone: the totals say so.
    let FsResult::StatFs(st) = run(&mut fs, FsOp::StatFs) else { panic!() };
    assert_eq!((st.total_inodes - st.free_inodes, st.total_bytes - st.free_bytes), (2, 0));
}

#[test]
fn rename_replaces_moves_and_refuses_a_move_into_its_own_subtree() {
    let mut fs = small();
    let a = mkdir(&mut fs, ROOT, "a");
    let ab = mkdir(&mut fs, a.ino, "b");
    let abc = mkdir(&mut fs, ab.ino, "c");
    let mv = |fs: &mut FsService, from: (Ino, &str), to: (Ino, &str), no_replace: bool| {
        run(fs, FsOp::Rename { from_dir: from.0, from_name: b(from.1), to_dir: to.0, to_name: b(to.1), no_replace })
    };
    assert_eq!(mv(&mut fs, (ROOT, "a"), (abc.ino, "x"), false), FsResult::Error(errno::EINVAL));
    assert_eq!(mv(&mut fs, (ROOT, "a"), (a.ino, "x"), false), FsResult::Error(errno::EINVAL));
    // A directory moves up: link counts follow, and `..` too.
    assert_eq!(mv(&mut fs, (ab.ino, "c"), (ROOT, "c"), false), FsResult::Done);
    assert_eq!(attr(&mut fs, FsOp::GetAttr { ino: ab.ino }).nlink, 2);
    assert_eq!(attr(&mut fs, FsOp::GetAttr { ino: ROOT }).nlink, 4);
    assert_eq!(attr(&mut fs, FsOp::Lookup { dir: abc.ino, name: b("..") }).ino, ROOT);
    // Files replace files; a file never replaces a directory, nor the reverse.
    let f = create(&mut fs, ROOT, "f");
    let g = create(&mut fs, ROOT, "g");
    write(&mut fs, g.ino, 0, &[1; 40_000]);
    assert_eq!(mv(&mut fs, (ROOT, "f"), (ROOT, "c"), false), FsResult::Error(errno::EISDIR));
    assert_eq!(mv(&mut fs, (ROOT, "c"), (ROOT, "f"), false), FsResult::Error(errno::ENOTDIR));
    assert_eq!(mv(&mut fs, (ROOT, "f"), (ROOT, "g"), true), FsResult::Error(errno::EEXIST));
    assert_eq!(mv(&mut fs, (ROOT, "f"), (ROOT, "g"), false), FsResult::Done);
    assert_eq!(attr(&mut fs, FsOp::Lookup { dir: ROOT, name: b("g") }).ino, f.ino);
    assert_eq!(err(&mut fs, FsOp::GetAttr { ino: g.ino }), errno::ESTALE, "the replaced file is freed");
    let FsResult::StatFs(st) = run(&mut fs, FsOp::StatFs) else { panic!() };
    assert_eq!(st.total_bytes - st.free_bytes, 0, "with its blocks");
    // A directory replaces an empty directory only.
    let full = mkdir(&mut fs, ROOT, "full");
    create(&mut fs, full.ino, "x");
    assert_eq!(mv(&mut fs, (ROOT, "c"), (ROOT, "full"), false), FsResult::Error(errno::ENOTEMPTY));
    assert_eq!(mv(&mut fs, (ROOT, "c"), (ab.ino, "empty"), false), FsResult::Done);
    assert_eq!(mv(&mut fs, (ab.ino, "empty"), (ab.ino, "empty"), false), FsResult::Done, "onto itself: nothing");
    let before = attr(&mut fs, FsOp::GetAttr { ino: ROOT }).nlink;
    mkdir(&mut fs, ROOT, "e2");
    assert_eq!(mv(&mut fs, (ab.ino, "empty"), (ROOT, "e2"), false), FsResult::Done);
    assert_eq!(attr(&mut fs, FsOp::GetAttr { ino: ROOT }).nlink, before + 1);
    assert_eq!(names(&mut fs, ROOT), ["a", "g", "full", "e2"]);
}

#[test]
fn listings_resume_from_a_cookie_without_repeating_or_skipping() {
    let mut fs = small();
    for i in 0..300 {
        create(&mut fs, ROOT, &format!("file-{i:03}"));
    }
    assert_eq!(names(&mut fs, ROOT), (0..300).map(|i| format!("file-{i:03}")).collect::<Vec<_>>());
    // Remove entries while a listing is under way: the rest still comes once.
    let FsResult::Entries { entries, more: true } =
        run(&mut fs, FsOp::ReadDir { dir: ROOT, cookie: 0, max_bytes: 400 })
    else {
        panic!("the first page should not be the last")
    };
    let last = entries.last().unwrap().cookie;
    for i in (0..300).step_by(2) {
        run(&mut fs, FsOp::Unlink { dir: ROOT, name: b(&format!("file-{i:03}")) });
    }
    let mut rest = Vec::new();
    let mut cookie = last;
    loop {
        let FsResult::Entries { entries, more } = run(&mut fs, FsOp::ReadDir { dir: ROOT, cookie, max_bytes: 400 })
        else {
            panic!()
        };
        rest.extend(entries.iter().map(|e| e.name.clone()));
        cookie = entries.last().map_or(cookie, |e| e.cookie);
        if !more {
            break;
        }
    }
    let expected: Vec<Bytes> =
        (entries.len()..300).filter(|i| i % 2 == 1).map(|i| b(&format!("file-{i:03}"))).collect();
    assert_eq!(rest, expected);
}

/// Every hostile operation gets an errno and changes nothing.
#[test]
fn hostile_operations_get_an_errno_and_change_nothing() {
    let limits =
        FsLimits { max_file_bytes: 1 << 20, max_total_bytes: 4 * BLOCK_BYTES, max_inodes: 50, ..FsLimits::default() };
    let mut fs = FsService::with_parts(limits, 8);
    let f = create(&mut fs, ROOT, "f");
    let d = mkdir(&mut fs, ROOT, "d");
    let long = "x".repeat(256);
    let hostile = [
        (FsOp::Write { ino: f.ino, offset: u64::MAX - 2, data: b("abcdef") }, errno::EFBIG),
        (FsOp::Write { ino: f.ino, offset: 1 << 20, data: b("a") }, errno::EFBIG),
        (FsOp::Write { ino: f.ino, offset: 0, data: Bytes::from(vec![0u8; 5 * BLOCK_BYTES as usize]) }, errno::ENOSPC),
        (FsOp::Write { ino: d.ino, offset: 0, data: b("a") }, errno::EISDIR),
        (FsOp::Write { ino: 999, offset: 0, data: b("a") }, errno::ESTALE),
        (FsOp::SetAttr { ino: f.ino, set: SetAttr { size: Some(u64::MAX), ..SetAttr::default() } }, errno::EFBIG),
        (FsOp::SetAttr { ino: d.ino, set: SetAttr { size: Some(0), ..SetAttr::default() } }, errno::EISDIR),
        (FsOp::Create { dir: ROOT, name: b("a/b"), mode: 0, uid: 0, gid: 0, exclusive: true }, errno::EINVAL),
        (FsOp::Create { dir: ROOT, name: b("a\0b"), mode: 0, uid: 0, gid: 0, exclusive: true }, errno::EINVAL),
        (FsOp::Create { dir: ROOT, name: b(".."), mode: 0, uid: 0, gid: 0, exclusive: true }, errno::EINVAL),
        (FsOp::Create { dir: ROOT, name: b(""), mode: 0, uid: 0, gid: 0, exclusive: true }, errno::ENOENT),
        (FsOp::Create { dir: ROOT, name: b(&long), mode: 0, uid: 0, gid: 0, exclusive: true }, errno::ENAMETOOLONG),
        (FsOp::Create { dir: f.ino, name: b("x"), mode: 0, uid: 0, gid: 0, exclusive: true }, errno::ENOTDIR),
        (FsOp::Symlink { dir: ROOT, name: b("s"), target: b(&"t".repeat(5000)), uid: 0, gid: 0 }, errno::ENAMETOOLONG),
        (
            FsOp::Rename { from_dir: ROOT, from_name: b("d"), to_dir: d.ino, to_name: b("d"), no_replace: false },
            errno::EINVAL,
        ),
        (
            FsOp::Rename { from_dir: ROOT, from_name: b("f"), to_dir: ROOT, to_name: b("x/y"), no_replace: false },
            errno::EINVAL,
        ),
        (FsOp::Rmdir { dir: ROOT, name: b(".") }, errno::EINVAL),
        (FsOp::Link { ino: f.ino, dir: ROOT, name: b("d") }, errno::EEXIST),
    ];
    write(&mut fs, f.ino, 0, b"kept");
    for (op, expected) in hostile {
        let before = fs.snapshot();
        assert_eq!(err(&mut fs, op.clone()), expected, "{op:?}");
        assert_eq!(fs.snapshot(), before, "{op:?} changed the state");
    }
    assert_eq!(read(&mut fs, f.ino, u64::MAX, u32::MAX), Bytes::new());
    assert_eq!(read(&mut fs, f.ino, 0, 100), b("kept"));
    // Inodes run out with ENOSPC, not a panic.
    let mut last = FsResult::Done;
    for i in 0..60 {
        last = run(&mut fs, FsOp::Mkdir { dir: ROOT, name: b(&format!("m{i}")), mode: 0, uid: 0, gid: 0 });
    }
    assert_eq!(last, FsResult::Error(errno::ENOSPC));
}

#[test]
fn a_deep_tree_needs_no_recursion_and_cannot_be_moved_under_itself() {
    let limits = FsLimits { max_inodes: 10_000, ..FsLimits::default() };
    let mut fs = FsService::with_parts(limits, 8);
    let top = mkdir(&mut fs, ROOT, "top");
    let mut dir = top.ino;
    for _ in 0..3000 {
        dir = mkdir(&mut fs, dir, "d").ino;
    }
    let r = run(
        &mut fs,
        FsOp::Rename { from_dir: ROOT, from_name: b("top"), to_dir: dir, to_name: b("loop"), no_replace: false },
    );
    assert_eq!(r, FsResult::Error(errno::EINVAL));
    create(&mut fs, dir, "leaf");
    assert_eq!(attr(&mut fs, FsOp::Lookup { dir, name: b("leaf") }).kind, Kind::File);
}

#[test]
fn replicas_applying_the_same_operations_agree_and_snapshots_install_anywhere() {
    let ops = |fs: &mut FsService| {
        let d = mkdir(fs, ROOT, "src");
        for i in 0..20 {
            let f = create(fs, d.ino, &format!("f{i}"));
            write(fs, f.ino, i * 1000, &vec![i as u8; 20_000]);
        }
        run(
            fs,
            FsOp::Rename { from_dir: d.ino, from_name: b("f3"), to_dir: ROOT, to_name: b("moved"), no_replace: false },
        );
        run(fs, FsOp::Unlink { dir: d.ino, name: b("f4") });
    };
    let (mut a, mut b2) = (small(), small());
    ops(&mut a);
    ops(&mut b2);
    assert_eq!(a.snapshot(), b2.snapshot());
    assert_eq!(run(&mut a, FsOp::Digest), run(&mut b2, FsOp::Digest));
    // A replica restored from a snapshot, or part by part, is the same.
    let mut c = small();
    c.install(&a.snapshot()).unwrap();
    assert_eq!(run(&mut c, FsOp::Digest), run(&mut a, FsOp::Digest));
    let mut d = small();
    create(&mut d, ROOT, "stale");
    for p in 0..a.store.part_count() {
        let part = a.store.part(p);
        d.store.install_part(p, part.records()).unwrap();
    }
    assert_eq!(d, a);
    assert_eq!(names(&mut d, ROOT), ["src", "moved"]);
    // Another timestamp is another state.
    let mut e = small();
    e.execute(&ctx(5), &FsOp::Mkdir { dir: ROOT, name: b("x"), mode: 0, uid: 0, gid: 0 }.encode());
    let mut g = small();
    g.execute(&ctx(6), &FsOp::Mkdir { dir: ROOT, name: b("x"), mode: 0, uid: 0, gid: 0 }.encode());
    assert_ne!(run(&mut e, FsOp::Digest), run(&mut g, FsOp::Digest));
}

#[test]
fn the_read_only_path_refuses_writes_and_garbage_is_an_error() {
    let fs = small();
    let w = FsOp::Mkdir { dir: ROOT, name: b("x"), mode: 0, uid: 0, gid: 0 };
    assert_eq!(FsResult::decode(&fs.execute_unordered(&w.encode())).unwrap(), FsResult::BadOperation);
    let mut fs = small();
    assert_eq!(FsResult::decode(&fs.execute(&ctx(1), b"\xff\xff\xff")).unwrap(), FsResult::BadOperation);
}

#[test]
fn every_change_moves_the_change_time_within_one_millisecond() {
    // `run` executes everything at the same timestamp, as one batch would.
    let mut fs = small();
    let f = create(&mut fs, ROOT, "f");
    let mut seen = vec![f.ctime_ns];
    let getattr = |fs: &mut FsService| attr(fs, FsOp::GetAttr { ino: f.ino }).ctime_ns;
    write(&mut fs, f.ino, 0, b"one");
    seen.push(getattr(&mut fs));
    write(&mut fs, f.ino, 0, b"two");
    seen.push(getattr(&mut fs));
    truncate(&mut fs, f.ino, 3);
    seen.push(getattr(&mut fs));
    attr(&mut fs, FsOp::SetAttr { ino: f.ino, set: SetAttr { mode: Some(0o600), ..SetAttr::default() } });
    seen.push(getattr(&mut fs));
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "change times {seen:?}");
    assert_eq!(seen[0], 1000 * 1_000_000, "the first change is at the batch's time");
    // Time moving on takes over again.
    let later =
        FsResult::decode(&fs.execute(&ctx(5000), &FsOp::Write { ino: f.ino, offset: 0, data: b("x") }.encode()));
    assert!(matches!(later, Ok(FsResult::Written(1))));
    assert_eq!(getattr(&mut fs), 5000 * 1_000_000);
}
