//! `palisade-bench andrew`: the Andrew-style benchmark PBFT's BFS was
//! measured with, on a local directory and on the replicated file system
//! mounted with FUSE over one unreplicated server, 4 replicas (BFT) and 3
//! (CFT), in one invocation.
//!
//! The five phases run on a mount point as ordinary programs would:
//! 1. create the tree's directories;
//! 2. copy its files in (and a Makefile);
//! 3. stat every file;
//! 4. read every byte (and check it against the source);
//! 5. compile every directory of C sources into a library with `make`.
//!
//! The tree is scaled by copying it `--scale` times, as BFS's Andrew100
//! copied Andrew's. Targets alternate within a round, so that a drifting
//! machine affects all alike, and each phase reports its median.

use crate::cores::Split;
use crate::processes::read_metrics;
use crate::report::median;
use clap::{Args, ValueEnum};
use palisade::fsmount::{MountOptions, MountStats, Mounted, Op};
use palisade::keygen::{keygen, KeygenOptions};
use palisade_bench::procstat::{self, MachineTimes};
use palisade_bench::svg;
use palisade_client::{Client, ClientOptions};
use palisade_core::Mode;
use palisade_host::Durability;
use palisade_services::fs::FsClient;
use palisade_wire::ClusterConfig;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// What `palisade-bench andrew` takes.
#[derive(Args, Clone, Debug, Serialize)]
pub(crate) struct AndrewArgs {
    /// The source tree [default: the Lua sources in Cargo's registry copy
    /// of the `lua-src` crate, MIT licensed, which this harness depends on].
    #[arg(long)]
    pub(crate) source: Option<PathBuf>,
    /// Copies of the tree (BFS's Andrew100 had 100 of Andrew's).
    #[arg(long, default_value_t = 1)]
    pub(crate) scale: usize,
    /// What to run on, in this order within each round.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "local,unreplicated,bft,cft")]
    pub(crate) targets: Vec<Target>,
    /// Rounds; every phase reports its median over them.
    #[arg(long, default_value_t = 1)]
    pub(crate) rounds: usize,
    /// Parallel compile jobs (`make -j`).
    #[arg(long, default_value_t = 2)]
    pub(crate) jobs: usize,
    /// Compiler flags of the compile phase.
    #[arg(long, default_value = "-O0 -w -DLUA_USE_POSIX")]
    pub(crate) cflags: String,
    /// What the replicas write to disk.
    #[arg(long, default_value = "full")]
    pub(crate) durability: Durability,
    /// Where to write andrew.json and andrew.svg.
    #[arg(long, default_value = "bench-results")]
    pub(crate) out: PathBuf,
    /// First port of the servers started.
    #[arg(long, default_value_t = 7700)]
    pub(crate) base_port: u16,
    /// Kill the primary (`kill -9`) once this many files of the copy phase
    /// are written, on the replicated targets.
    #[arg(long)]
    pub(crate) kill_primary_after_files: Option<usize>,
    /// Milliseconds the kernel may cache attributes (see `palisade fs mount`).
    #[arg(long, default_value_t = 1000)]
    pub(crate) attr_ttl_ms: u64,
    /// Send every write(2) before it returns (see `palisade fs mount`).
    #[arg(long)]
    pub(crate) sync_writes: bool,
    /// Milliseconds the kernel may cache names.
    #[arg(long, default_value_t = 1000)]
    pub(crate) entry_ttl_ms: u64,
    /// Work here and keep it (the trees, the clusters' data) instead of a
    /// scratch directory removed afterwards.
    #[arg(long)]
    pub(crate) work: Option<PathBuf>,
    /// Run the harness, its mount and the compiler on the first half of
    /// the CPUs and every server on the rest, as BFS ran its client and
    /// its servers on machines of their own (docs/benchmarks.md).
    #[arg(long)]
    pub(crate) split_cores: bool,
    /// Replicas execute prepared batches tentatively (docs/protocol.md).
    #[arg(long)]
    pub(crate) tentative: bool,
}

/// Where the phases run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Target {
    /// A directory on the local disk.
    Local,
    /// The FUSE mount over one unreplicated server (PBFT's BFS-nr).
    Unreplicated,
    /// The FUSE mount over 4 replicas tolerating 1 Byzantine fault.
    Bft,
    /// The FUSE mount over 3 replicas tolerating 1 crash.
    Cft,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Local => "local",
            Target::Unreplicated => "unreplicated",
            Target::Bft => "bft",
            Target::Cft => "cft",
        }
    }
}

const PHASES: [&str; 5] = ["1 mkdir", "2 copy", "3 stat", "4 read", "5 compile"];

/// The source tree, read once: directories (parents first) and files.
pub(crate) struct Tree {
    dirs: Vec<PathBuf>,
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Tree {
    /// Reads `root`, in name order; symbolic links and special files are skipped.
    pub(crate) fn read(root: &Path) -> std::io::Result<Tree> {
        let mut tree = Tree { dirs: Vec::new(), files: Vec::new() };
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(root.join(&rel))?.collect::<Result<_, _>>()?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries.into_iter().rev() {
                let t = e.file_type()?;
                let path = rel.join(e.file_name());
                if t.is_dir() {
                    tree.dirs.push(path.clone());
                    stack.push(path);
                } else if t.is_file() {
                    tree.files.push((path.clone(), std::fs::read(e.path())?));
                }
            }
        }
        tree.dirs.sort();
        tree.files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(tree)
    }

    /// Bytes of file data.
    pub(crate) fn bytes(&self) -> usize {
        self.files.iter().map(|f| f.1.len()).sum()
    }

    /// Directories holding C sources: each becomes a library.
    fn units(&self) -> BTreeMap<PathBuf, Vec<PathBuf>> {
        let mut units: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
        for (p, _) in &self.files {
            if p.extension().is_some_and(|e| e == "c") {
                units.entry(p.parent().unwrap_or(Path::new("")).to_path_buf()).or_default().push(p.clone());
            }
        }
        units
    }

    /// The Makefile of the compile phase for `copies` copies.
    fn makefile(&self, copies: usize, cflags: &str) -> String {
        let mut libs = Vec::new();
        let mut rules = String::new();
        for k in 0..copies {
            for (dir, sources) in self.units() {
                let base = Path::new(&format!("copy-{k}")).join(&dir);
                let lib = base.join("libtree.a");
                let objs: Vec<String> =
                    sources.iter().map(|s| format!("copy-{k}/{}", s.with_extension("o").display())).collect();
                rules.push_str(&format!("{}: {}\n\tar rcs $@ $^\n", lib.display(), objs.join(" ")));
                libs.push(lib.display().to_string());
            }
        }
        format!(
            "CC ?= cc\nCFLAGS = {cflags}\nall: {}\n{rules}%.o: %.c\n\t$(CC) $(CFLAGS) -c -o $@ $<\n",
            libs.join(" ")
        )
    }
}

/// The default source tree: `lua-src` in Cargo's registry.
pub(crate) fn default_source() -> Result<PathBuf, String> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set: pass --source")?;
    let mut found = Vec::new();
    for index in std::fs::read_dir(home.join("registry/src")).map_err(|e| format!("{}: {e}", home.display()))?.flatten()
    {
        for krate in std::fs::read_dir(index.path()).into_iter().flatten().flatten() {
            if krate.file_name().to_string_lossy().starts_with("lua-src-") {
                found.push(krate.path());
            }
        }
    }
    found.sort();
    found.pop().ok_or_else(|| {
        "no lua-src crate in Cargo's registry (`cargo fetch` in this workspace brings it): pass --source".to_string()
    })
}

/// Phase 1: every directory of every copy.
fn mkdirs(root: &Path, tree: &Tree, copies: usize) -> std::io::Result<()> {
    for k in 0..copies {
        let base = root.join(format!("copy-{k}"));
        std::fs::create_dir(&base)?;
        for d in &tree.dirs {
            std::fs::create_dir(base.join(d))?;
        }
    }
    Ok(())
}

/// Phase 2: every file of every copy, then the Makefile; `after_file` is
/// told how many files are written so far.
fn copy(root: &Path, tree: &Tree, a: &AndrewArgs, after_file: &mut dyn FnMut(usize)) -> std::io::Result<()> {
    let mut n = 0;
    for k in 0..a.scale {
        let base = root.join(format!("copy-{k}"));
        for (p, bytes) in &tree.files {
            std::fs::write(base.join(p), bytes)?;
            n += 1;
            after_file(n);
        }
    }
    std::fs::write(root.join("Makefile"), tree.makefile(a.scale, &a.cflags))
}

fn walk(
    root: &Path,
    visit: &mut dyn FnMut(&Path, &std::fs::Metadata) -> std::io::Result<()>,
) -> std::io::Result<usize> {
    let mut stack = vec![root.to_path_buf()];
    let mut n = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let path = e?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            n += 1;
            if meta.is_dir() {
                stack.push(path.clone());
            }
            visit(&path, &meta)?;
        }
    }
    Ok(n)
}

/// Phase 3: stat everything.
fn stat_all(root: &Path) -> std::io::Result<usize> {
    walk(root, &mut |_, _| Ok(()))
}

/// Phase 4: read every byte, and check the copies against the source.
fn read_all(root: &Path, tree: &Tree, copies: usize) -> std::io::Result<usize> {
    let mut bytes = 0;
    walk(root, &mut |path, meta| {
        if meta.is_file() {
            let data = std::fs::read(path)?;
            bytes += data.len();
        }
        Ok(())
    })?;
    for k in 0..copies {
        for (p, want) in &tree.files {
            let path = root.join(format!("copy-{k}")).join(p);
            if std::fs::read(&path)? != *want {
                return Err(std::io::Error::other(format!("{} differs from its source", path.display())));
            }
        }
    }
    Ok(bytes)
}

/// Phase 5: `make`.
fn compile(root: &Path, jobs: usize) -> std::io::Result<()> {
    let out = Command::new("make").arg("-C").arg(root).arg("-s").arg(format!("-j{jobs}")).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("make failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(())
}

/// The servers of one target, killed when dropped.
struct Servers {
    dir: PathBuf,
    children: BTreeMap<u32, Child>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in self.children.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Servers {
    /// CPU seconds the running servers have used.
    fn cpu_seconds(&self) -> f64 {
        self.children.values().filter_map(|c| procstat::cpu_seconds(c.id())).sum()
    }

    /// Kills the replica that says it is primary; returns its id.
    fn kill_primary(&mut self) -> Option<u32> {
        let id = self.children.keys().copied().find(|id| read_metrics(&self.dir, *id).is_some_and(|m| m.primary))?;
        let mut c = self.children.remove(&id)?;
        let _ = c.kill();
        let _ = c.wait();
        Some(id)
    }
}

fn server_log(dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(dir.join(format!("{name}.log"))).map_or(Stdio::null(), Stdio::from)
}

/// Writes a configuration and starts the servers of `t`.
fn start_servers(t: Target, dir: &Path, a: &AndrewArgs, split: Option<&Split>) -> Result<Servers, String> {
    let (n, mode) = match t {
        Target::Unreplicated => (1, Mode::Cft),
        Target::Bft => (4, Mode::Bft),
        Target::Cft => (3, Mode::Cft),
        Target::Local => unreachable!("no servers for a local directory"),
    };
    let port = a.base_port + 10 * (t as u16);
    let opts = KeygenOptions {
        replicas: n,
        out: dir.to_path_buf(),
        mode,
        f: (n == 1).then_some(0),
        addresses: vec![],
        base_port: port,
        cluster_id: None,
        request_auth: Default::default(),
        requests_to_all: false,
    };
    keygen(&opts).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let config = dir.to_str().ok_or("a non-UTF-8 work path")?;
    let mut children = BTreeMap::new();
    for id in 0..n as u32 {
        let mut cmd = Command::new(&exe);
        if t == Target::Unreplicated {
            cmd.args(["baseline-server", "--config", config, "--service", "fs"]);
        } else {
            let metrics = dir.join(format!("metrics-{id}.json"));
            cmd.args(["server", "--config", config, "--id", &id.to_string(), "--service", "fs"])
                .args(["--durability", &a.durability.to_string()])
                .arg("--metrics-file")
                .arg(metrics);
            if a.tentative {
                cmd.arg("--tentative");
            }
        }
        if let Some(split) = split {
            split.pin_server(&mut cmd);
        }
        let child = cmd.stderr(server_log(dir, &format!("server-{id}"))).spawn().map_err(|e| e.to_string())?;
        children.insert(id, child);
    }
    Ok(Servers { dir: dir.to_path_buf(), children })
}

/// One target's phase times in seconds, and what it checked.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TargetRun {
    target: Target,
    round: usize,
    seconds: [f64; 5],
    files: usize,
    bytes_read: usize,
    /// The state digest the replicas agreed on after the compile.
    digest: Option<String>,
    /// The replica killed during the copy.
    killed: Option<u32>,
    /// What the mount asked of the servers, per phase.
    calls: [PhaseCalls; 5],
    /// CPU seconds the servers used, from their start to the end of the
    /// compile (a killed replica's are lost with it).
    server_cpu_seconds: Option<f64>,
    /// CPU seconds of this process over the phases: the mount, its client,
    /// and the copy and read phases' own work (not the compiler's).
    harness_cpu_seconds: f64,
    /// Percent of the machine idle over the phases, and stolen by its host.
    idle_percent: f64,
    steal_percent: f64,
}

/// The calls of one phase, and their mean wait.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct PhaseCalls {
    ordered: u64,
    ordered_mean_ms: f64,
    reads: u64,
    reads_mean_ms: f64,
    /// Calls by kind (those made at all).
    by_kind: BTreeMap<&'static str, u64>,
}

impl From<MountStats> for PhaseCalls {
    fn from(m: MountStats) -> Self {
        let mean = |(n, ns): (u64, u64)| if n == 0 { 0.0 } else { ns as f64 / n as f64 / 1e6 };
        let (ordered, reads) = (m.sum(|op| !op.is_read()), m.sum(Op::is_read));
        PhaseCalls {
            ordered: ordered.0,
            ordered_mean_ms: mean(ordered),
            reads: reads.0,
            reads_mean_ms: mean(reads),
            by_kind: Op::ALL.iter().zip(m.calls).filter(|(_, n)| *n > 0).map(|(op, n)| (op.name(), n)).collect(),
        }
    }
}

fn run_target(
    t: Target,
    round: usize,
    work: &Path,
    tree: &Tree,
    a: &AndrewArgs,
    split: Option<&Split>,
) -> Result<TargetRun, String> {
    let here = work.join(format!("{}-{round}", t.name()));
    std::fs::create_dir_all(&here).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut servers = None;
    let mut mounted: Option<Mounted> = None;
    let mut client = None;
    let root = if t == Target::Local {
        let root = here.join("tree");
        std::fs::create_dir(&root).map_err(|e| e.to_string())?;
        root
    } else {
        let dir = here.join("cluster");
        servers = Some(start_servers(t, &dir, a, split)?);
        let cluster = ClusterConfig::load(&dir).map_err(|e| e.to_string())?;
        let mount_opts = MountOptions::for_cluster(&cluster);
        let key = palisade_wire::keys::generate(&mut rand_core::OsRng);
        let opts = ClientOptions { timeout_ms: 30_000, ..ClientOptions::default() };
        let fs = FsClient::new(rt.block_on(async { Client::connect(cluster, key, opts) }))
            .with_max_write(mount_opts.max_write as usize);
        let start = Instant::now();
        while let Err(e) = rt.block_on(fs.statfs()) {
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!("the {} servers did not answer within 30 s: {e}", t.name()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The replicas report where they stand every 250 ms; the kill
        // during the copy reads it.
        let ids: Vec<u32> = servers.as_ref().map(|s| s.children.keys().copied().collect()).unwrap_or_default();
        while t != Target::Unreplicated && !ids.iter().all(|id| read_metrics(&dir, *id).is_some()) {
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!("the {} replicas wrote no metrics within 30 s", t.name()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mnt = here.join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        let opts = MountOptions {
            attr_ttl: Duration::from_millis(a.attr_ttl_ms),
            entry_ttl: Duration::from_millis(a.entry_ttl_ms),
            write_behind: !a.sync_writes,
            ..mount_opts
        };
        mounted = Some(
            palisade::fsmount::mount(fs.clone(), rt.handle().clone(), &mnt, opts)
                .map_err(|e| format!("mounting at {}: {e}", mnt.display()))?,
        );
        client = Some(fs);
        mnt
    };
    let io = |phase: &str, e: std::io::Error| format!("{} phase {phase}: {e}", t.name());
    let machine_before = MachineTimes::now().unwrap_or_default();
    let harness_before = procstat::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let mut calls: [PhaseCalls; 5] = Default::default();
    let mut last = MountStats::default();
    let mut count_calls = |p: usize, m: &Option<Mounted>| {
        if let Some(m) = m {
            let now = m.stats();
            calls[p] = PhaseCalls::from(now.since(&last));
            last = now;
        }
    };
    let mut seconds = [0.0; 5];
    let mut killed = None;
    let t0 = Instant::now();
    mkdirs(&root, tree, a.scale).map_err(|e| io(PHASES[0], e))?;
    seconds[0] = t0.elapsed().as_secs_f64();
    count_calls(0, &mounted);
    let t0 = Instant::now();
    let mut kill = |n: usize| {
        if a.kill_primary_after_files == Some(n) && killed.is_none() {
            killed = servers.as_mut().filter(|_| t != Target::Unreplicated).and_then(Servers::kill_primary);
        }
    };
    copy(&root, tree, a, &mut kill).map_err(|e| io(PHASES[1], e))?;
    seconds[1] = t0.elapsed().as_secs_f64();
    count_calls(1, &mounted);
    let t0 = Instant::now();
    let files = stat_all(&root).map_err(|e| io(PHASES[2], e))?;
    seconds[2] = t0.elapsed().as_secs_f64();
    count_calls(2, &mounted);
    let t0 = Instant::now();
    let bytes_read = read_all(&root, tree, a.scale).map_err(|e| io(PHASES[3], e))?;
    seconds[3] = t0.elapsed().as_secs_f64();
    count_calls(3, &mounted);
    let t0 = Instant::now();
    compile(&root, a.jobs).map_err(|e| io(PHASES[4], e))?;
    seconds[4] = t0.elapsed().as_secs_f64();
    count_calls(4, &mounted);
    let digest = match &client {
        Some(fs) => Some(rt.block_on(fs.digest()).map(hex::encode).map_err(|e| format!("digest: {e}"))?),
        None => None,
    };
    let (idle_percent, steal_percent) =
        MachineTimes::now().map_or((0.0, 0.0), |now| now.percent_since(&machine_before));
    let harness_cpu_seconds = procstat::cpu_seconds(std::process::id()).unwrap_or(0.0) - harness_before;
    let server_cpu_seconds = servers.as_ref().map(Servers::cpu_seconds);
    if let Some(m) = mounted {
        m.unmount().map_err(|e| format!("unmounting: {e}"))?;
    }
    drop(servers);
    Ok(TargetRun {
        target: t,
        round,
        seconds,
        files,
        bytes_read,
        digest,
        killed,
        calls,
        server_cpu_seconds,
        harness_cpu_seconds,
        idle_percent,
        steal_percent,
    })
}

/// The results file.
#[derive(Serialize)]
struct AndrewReport {
    command: String,
    cpu_model: String,
    cores: usize,
    source: PathBuf,
    tree_files: usize,
    tree_bytes: usize,
    args: AndrewArgs,
    runs: Vec<TargetRun>,
    /// Median seconds by target, per phase and in total.
    medians: BTreeMap<Target, [f64; 6]>,
    /// Ratios of whole-benchmark times within each round (the targets of
    /// a round run back to back, so they share the machine's mood).
    paired_ratios: Vec<PairedRatio>,
    /// The CPUs of each side, with `--split-cores`.
    split: Option<Split>,
}

/// One ratio of totals, round by round.
#[derive(Debug, Serialize)]
struct PairedRatio {
    target: Target,
    to: Target,
    per_round: Vec<f64>,
    median: f64,
}

/// BFT and CFT to the unreplicated server, round by round, for the rounds
/// that ran both.
fn paired_ratios(runs: &[TargetRun]) -> Vec<((Target, Target), Vec<f64>)> {
    let total = |t: Target, round: usize| {
        runs.iter().find(|r| r.target == t && r.round == round).map(|r| r.seconds.iter().sum::<f64>())
    };
    let rounds = runs.iter().map(|r| r.round).max().map_or(0, |m| m + 1);
    [(Target::Bft, Target::Unreplicated), (Target::Cft, Target::Unreplicated)]
        .into_iter()
        .filter_map(|(x, y)| {
            let r: Vec<f64> = (0..rounds).filter_map(|i| Some(total(x, i)? / total(y, i)?.max(1e-9))).collect();
            (!r.is_empty()).then_some(((x, y), r))
        })
        .collect()
}

/// Runs the benchmark; exit code 2 on a setup error or a failed phase.
pub(crate) fn run(a: AndrewArgs) -> ExitCode {
    match andrew(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-bench andrew: {e}");
            ExitCode::from(2)
        }
    }
}

fn andrew(a: &AndrewArgs) -> Result<(), String> {
    let source = match &a.source {
        Some(s) => s.clone(),
        None => default_source()?,
    };
    let tree = Tree::read(&source).map_err(|e| format!("reading {}: {e}", source.display()))?;
    if tree.units().is_empty() {
        return Err(format!("{} holds no C sources to compile", source.display()));
    }
    let scratch = a.work.is_none();
    let work =
        a.work.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("palisade-andrew-{}", std::process::id())));
    if scratch {
        let _ = std::fs::remove_dir_all(&work);
    }
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    println!(
        "andrew: {} ({} files, {} KiB) x {}, targets {:?}, {} round(s)",
        source.display(),
        tree.files.len(),
        tree.bytes() / 1024,
        a.scale,
        a.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        a.rounds
    );
    let split = a.split_cores.then(Split::of_this_machine).transpose()?;
    if let Some(split) = &split {
        split.pin_this_process()?;
        println!("client side on CPUs {:?}, servers on CPUs {:?}", split.client, split.servers);
    }
    let mut runs = Vec::new();
    let mut failure = None;
    'rounds: for round in 0..a.rounds.max(1) {
        for &t in &a.targets {
            match run_target(t, round, &work, &tree, a, split.as_ref()) {
                Ok(r) => {
                    println!(
                        "round {round} {:>12}: {} total {:.2} s{}",
                        t.name(),
                        r.seconds.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(" / "),
                        r.seconds.iter().sum::<f64>(),
                        r.killed.map_or(String::new(), |k| format!(" (replica {k} killed during the copy)"))
                    );
                    print_costs(&r);
                    runs.push(r);
                }
                Err(e) => {
                    failure = Some(e);
                    break 'rounds;
                }
            }
        }
    }
    if scratch {
        let _ = std::fs::remove_dir_all(&work);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let mut medians = BTreeMap::new();
    for &t in &a.targets {
        let mine: Vec<&TargetRun> = runs.iter().filter(|r| r.target == t).collect();
        let mut m = [0.0; 6];
        for (p, slot) in m.iter_mut().enumerate().take(5) {
            *slot = median(mine.iter().map(|r| r.seconds[p]).collect());
        }
        m[5] = median(mine.iter().map(|r| r.seconds.iter().sum()).collect());
        medians.insert(t, m);
    }
    print_table(&medians);
    let paired = paired_ratios(&runs);
    for ((x, y), r) in &paired {
        let each: Vec<String> = r.iter().map(|v| format!("{v:.2}")).collect();
        println!(
            "total {}/{} round by round: {} (median {:.2})",
            short(*x),
            short(*y),
            each.join(", "),
            median(r.clone())
        );
    }
    let (cpu_model, cores) = procstat::machine();
    let report = AndrewReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        cpu_model,
        cores,
        source,
        tree_files: tree.files.len(),
        tree_bytes: tree.bytes(),
        args: a.clone(),
        runs,
        medians: medians.clone(),
        split: split.clone(),
        paired_ratios: paired
            .into_iter()
            .map(|((target, to), per_round)| PairedRatio { target, to, median: median(per_round.clone()), per_round })
            .collect(),
    };
    std::fs::create_dir_all(&a.out).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(a.out.join("andrew.json"), json).map_err(|e| e.to_string())?;
    let series: Vec<svg::Bars> =
        medians.iter().map(|(t, m)| svg::Bars { name: t.name().to_string(), values: m.to_vec() }).collect();
    let mut groups: Vec<String> = PHASES.iter().map(|p| p.to_string()).collect();
    groups.push("total".into());
    let chart = svg::bar_chart("Andrew-style benchmark: seconds per phase (median)", "seconds", &groups, &series);
    std::fs::write(a.out.join("andrew.svg"), chart).map_err(|e| e.to_string())?;
    println!("wrote {} and {}", a.out.join("andrew.json").display(), a.out.join("andrew.svg").display());
    Ok(())
}

fn print_table(medians: &BTreeMap<Target, [f64; 6]>) {
    let mut header = format!("{:<10}", "phase");
    for t in medians.keys() {
        header.push_str(&format!(" {:>12}", t.name()));
    }
    let ratios: Vec<(Target, Target)> = [
        (Target::Bft, Target::Unreplicated),
        (Target::Cft, Target::Unreplicated),
        (Target::Bft, Target::Local),
        (Target::Unreplicated, Target::Local),
    ]
    .into_iter()
    .filter(|(x, y)| medians.contains_key(x) && medians.contains_key(y))
    .collect();
    for (x, y) in &ratios {
        header.push_str(&format!(" {:>10}", format!("{}/{}", short(*x), short(*y))));
    }
    println!("{header}");
    for (p, name) in PHASES.iter().chain(["total"].iter()).enumerate() {
        let mut line = format!("{name:<10}");
        for m in medians.values() {
            line.push_str(&format!(" {:>12.2}", m[p]));
        }
        for (x, y) in &ratios {
            let r = medians[x][p] / medians[y][p].max(1e-9);
            line.push_str(&format!(" {r:>10.2}"));
        }
        println!("{line}");
    }
}

/// What a target's run cost besides time: round trips by phase and CPU.
fn print_costs(r: &TargetRun) {
    if r.target != Target::Local {
        let calls: Vec<String> = r
            .calls
            .iter()
            .map(|c| format!("{}o {:.2}ms + {}r {:.2}ms", c.ordered, c.ordered_mean_ms, c.reads, c.reads_mean_ms))
            .collect();
        println!("{:>21} calls by phase: {}", "", calls.join(" / "));
        let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
        for (k, n) in r.calls.iter().flat_map(|c| c.by_kind.iter()) {
            *kinds.entry(k).or_default() += n;
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("{:>21} calls by kind: {}", "", kinds.join(", "));
    }
    println!(
        "{:>21} CPU s: servers {}, harness {:.2}; machine idle {:.0}%, steal {:.0}%",
        "",
        r.server_cpu_seconds.map_or("-".into(), |s| format!("{s:.2}")),
        r.harness_cpu_seconds,
        r.idle_percent,
        r.steal_percent
    );
}

fn short(t: Target) -> &'static str {
    match t {
        Target::Local => "local",
        Target::Unreplicated => "nr",
        Target::Bft => "bft",
        Target::Cft => "cft",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(target: Target, round: usize, total: f64) -> TargetRun {
        TargetRun {
            target,
            round,
            seconds: [0.0, 0.0, 0.0, 0.0, total],
            files: 0,
            bytes_read: 0,
            digest: None,
            killed: None,
            calls: Default::default(),
            server_cpu_seconds: None,
            harness_cpu_seconds: 0.0,
            idle_percent: 0.0,
            steal_percent: 0.0,
        }
    }

    #[test]
    fn ratios_are_paired_within_rounds_and_a_round_missing_a_target_is_left_out() {
        let runs = vec![
            run(Target::Unreplicated, 0, 10.0),
            run(Target::Bft, 0, 12.0),
            run(Target::Unreplicated, 1, 20.0),
            run(Target::Bft, 1, 22.0),
            run(Target::Cft, 1, 30.0),
            run(Target::Bft, 2, 99.0),
        ];
        let paired = paired_ratios(&runs);
        assert_eq!(paired.len(), 2);
        let ((x, y), bft) = &paired[0];
        assert_eq!((*x, *y), (Target::Bft, Target::Unreplicated));
        assert_eq!(bft.len(), 2, "round 2 ran no unreplicated target");
        assert!((bft[0] - 1.2).abs() < 1e-9 && (bft[1] - 1.1).abs() < 1e-9, "{bft:?}");
        assert_eq!(paired[1].0, (Target::Cft, Target::Unreplicated));
        assert!((paired[1].1[0] - 1.5).abs() < 1e-9);
        assert!(paired_ratios(&[run(Target::Local, 0, 1.0)]).is_empty());
    }
}
