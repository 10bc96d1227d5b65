//! LazyFS: a FUSE file system that keeps written data in its own page cache
//! until the program `fsync`s or `fdatasync`s the file, and drops every unsynced
//! byte on command (`lazyfs::clear-cache`): a simulated power cut.
//!
//! One [`LazyFs`] owns a work directory holding `root/` (the backing directory:
//! what "the disk" holds), `mnt/` (the mount point programs use), the LazyFS
//! config, its two FIFOs and its log. A power cut ([`LazyFs::power_cut`]) is:
//! freeze the program under test (SIGSTOP, and wait until every one of its
//! threads is stopped, so a write in flight has landed in LazyFS's cache and
//! nothing more is written), drop the cache, SIGKILL it, reap it. Then
//! [`LazyFs::unmount`] leaves in `root/` exactly what survived.
//!
//! LazyFS's limits (from its packer's notes): creates, renames and unlinks are
//! durable at once; only file data written since the last sync of that file is
//! dropped. So a cut here is kinder than real power loss to metadata
//! operations, and exactly as hard on file data.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// LazyFS's page cache. It is pre-allocated at every mount (1 GiB took 1.3 s;
/// this takes a fraction) and must hold everything a mount writes, since
/// eviction is off (an evicting cache would write data back on its own).
const CACHE_SIZE: &str = "192mb";

/// Where the LazyFS binary is, or why there is none; builds it if it can.
///
/// `EVSPOOL_LAZYFS=PATH` names a built binary. Otherwise `target/lazyfs/lazyfs`
/// is used, built first (as root: the script installs g++, cmake, libfuse3-dev
/// and fuse3 with apt) by `$EVSPOOL_LAZYFS_TOOLS/build.sh`, by default
/// `../shared/tools/lazyfs/build.sh` beside the checkout.
pub fn binary() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("EVSPOOL_LAZYFS") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("EVSPOOL_LAZYFS={} is not a file", p.display()))
        };
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = manifest.join("target").join("lazyfs");
    let bin = out.join("lazyfs");
    if bin.is_file() {
        return Ok(bin);
    }
    let tools = std::env::var_os("EVSPOOL_LAZYFS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../shared/tools/lazyfs"));
    let script = tools.join("build.sh");
    if !script.is_file() {
        return Err(format!(
            "LazyFS is not built ({} is missing) and its build script {} does not exist \
             (set EVSPOOL_LAZYFS to a built binary or EVSPOOL_LAZYFS_TOOLS to the directory of build.sh)",
            bin.display(),
            script.display()
        ));
    }
    eprintln!(
        "powerloss: building LazyFS with {} (1-2 minutes)",
        script.display()
    );
    let status = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !status.success() || !bin.is_file() {
        return Err(format!(
            "building LazyFS with {} failed ({status})",
            script.display()
        ));
    }
    Ok(bin)
}

/// Whether FUSE can be used here at all: root and `/dev/fuse`.
pub fn fuse_usable() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Err(format!(
            "not running as root (uid {uid}); mounting LazyFS needs root"
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse does not exist".into());
    }
    Ok(())
}

/// A LazyFS work directory and, while mounted, the LazyFS process.
pub struct LazyFs {
    bin: PathBuf,
    /// Work directory (owned: removed on drop).
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub mnt: PathBuf,
    config: PathBuf,
    fifo: PathBuf,
    done: PathBuf,
    log: PathBuf,
    proc: Option<Child>,
    /// Read end of the completion FIFO: LazyFS's fault thread blocks until one is open.
    done_reader: Option<File>,
    /// Mounts so far (each one pre-allocates the cache).
    pub mounts: u64,
    pub mount_time: Duration,
    /// The fullest LazyFS's cache was at a cut, in percent of its pages. At
    /// 100 % LazyFS writes new data straight to the backing directory, where
    /// it survives the cut unsynced: such a cut proves nothing.
    pub peak_usage: f64,
}

impl LazyFs {
    /// A new work directory (nothing mounted yet).
    pub fn new(bin: &Path) -> LazyFs {
        // LazyFS ignores `--config-path` when the path contains "-o" in any
        // case (it takes it for a mount option): no hyphens in our part, and a
        // new name when the random part or the temp dir makes one.
        let tmp = (0..100)
            .map(|_| {
                tempfile::Builder::new()
                    .prefix("evspool_powerloss_")
                    .tempdir()
                    .expect("temp dir")
            })
            .find(|t| !t.path().to_string_lossy().to_lowercase().contains("-o"))
            .expect(
                "a temp dir whose path has no \"-o\" (LazyFS would ignore its config; set TMPDIR)",
            );
        let w = tmp.path().to_path_buf();
        let (root, mnt) = (w.join("root"), w.join("mnt"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        let (config, fifo, done, log) = (
            w.join("lazyfs.toml"),
            w.join("faults.fifo"),
            w.join("faults-done.fifo"),
            w.join("lazyfs.log"),
        );
        std::fs::write(
            &config,
            format!(
                "[faults]\nfifo_path=\"{}\"\nfifo_path_completed=\"{}\"\n\n\
                 [cache]\napply_eviction=false\n\n\
                 [cache.simple]\ncustom_size=\"{CACHE_SIZE}\"\nblocks_per_page=1\n\n\
                 [filesystem]\nlogfile=\"{}\"\nlog_all_operations=false\n",
                fifo.display(),
                done.display(),
                log.display()
            ),
        )
        .unwrap();
        LazyFs {
            bin: bin.to_path_buf(),
            _tmp: tmp,
            root,
            mnt,
            config,
            fifo,
            done,
            log,
            proc: None,
            done_reader: None,
            mounts: 0,
            mount_time: Duration::ZERO,
            peak_usage: 0.0,
        }
    }

    /// The work directory (for copies of cut stores and other scratch space).
    pub fn work(&self) -> &Path {
        self._tmp.path()
    }

    fn mounted(&self) -> bool {
        let Ok(m) = std::fs::read_to_string("/proc/mounts") else {
            return false;
        };
        let want = self.mnt.to_string_lossy();
        m.lines()
            .any(|l| l.split(' ').nth(1).is_some_and(|p| p == want))
    }

    /// The tail of LazyFS's own output, for error messages.
    fn log_tail(&self) -> String {
        let out = std::fs::read_to_string(self.log.with_extension("out")).unwrap_or_default();
        let tail: Vec<&str> = out.lines().rev().take(8).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Mounts `root/` on `mnt/` through LazyFS and waits (bounded) until it serves.
    pub fn mount(&mut self) -> Result<(), String> {
        assert!(self.proc.is_none(), "mounted twice");
        let started = Instant::now();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log.with_extension("out"))
            .unwrap();
        let mut child = Command::new(&self.bin)
            .arg(&self.mnt)
            .arg("--config-path")
            .arg(&self.config)
            .args(["-o", "allow_other", "-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", self.root.display()))
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.bin.display()))?;
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!(
                    "LazyFS exited ({status}) before mounting:\n{}",
                    self.log_tail()
                ));
            }
            if self.done_reader.is_none() && self.done.exists() {
                // Non-blocking: no writer yet is fine; LazyFS opens it next.
                self.done_reader = Some(
                    std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(&self.done)
                        .map_err(|e| format!("opening {}: {e}", self.done.display()))?,
                );
            }
            if self.done_reader.is_some() && self.mounted() {
                break;
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "LazyFS did not mount {} within 30 s:\n{}",
                    self.mnt.display(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.proc = Some(child);
        self.mounts += 1;
        self.mount_time += started.elapsed();
        Ok(())
    }

    /// Sends one command line to LazyFS's fault FIFO.
    fn command(&self, cmd: &str) -> Result<(), String> {
        let until = Instant::now() + Duration::from_secs(30);
        let mut fifo = loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.fifo)
            {
                Ok(f) => break f,
                // ENXIO: LazyFS has not opened its end yet.
                Err(e) if Instant::now() < until && e.raw_os_error() == Some(libc::ENXIO) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("opening {}: {e}", self.fifo.display())),
            }
        };
        fifo.write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| format!("writing {cmd}: {e}"))
    }

    /// How full LazyFS's cache is, in percent of its pages
    /// (`lazyfs::display-cache-usage`, answered in its log).
    pub fn cache_usage(&self) -> Result<f64, String> {
        const ANSWER: &str = "cache usage (%pages) is ";
        let from = std::fs::metadata(&self.log).map_or(0, |m| m.len()) as usize;
        self.command("lazyfs::display-cache-usage")?;
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read(&self.log).unwrap_or_default();
            let new = String::from_utf8_lossy(log.get(from..).unwrap_or_default());
            if let Some(at) = new.find(ANSWER) {
                let rest = &new[at + ANSWER.len()..];
                let number = rest.split('%').next().unwrap_or_default();
                return number
                    .trim()
                    .parse()
                    .map_err(|e| format!("LazyFS's cache usage {number:?}: {e}"));
            }
            if Instant::now() >= until {
                return Err("LazyFS did not report its cache usage within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Drops every byte not yet synced (`lazyfs::clear-cache`), and waits
    /// (bounded) until LazyFS reports it done. First records how full the
    /// cache was (see `peak_usage`).
    pub fn clear_cache(&mut self) -> Result<(), String> {
        let usage = self.cache_usage()?;
        self.peak_usage = self.peak_usage.max(usage);
        let reader = self.done_reader.as_mut().ok_or("not mounted")?;
        let mut buf = [0u8; 256];
        // Anything left over from an earlier command is not this answer.
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
        self.command("lazyfs::clear-cache")?;
        let until = Instant::now() + Duration::from_secs(30);
        let reader = self.done_reader.as_mut().ok_or("not mounted")?;
        let mut got = String::new();
        loop {
            match reader.read(&mut buf) {
                Ok(n) if n > 0 => {
                    got.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if got.contains("finished::clear-cache") {
                        return Ok(());
                    }
                }
                _ => {}
            }
            if Instant::now() >= until {
                return Err(format!(
                    "LazyFS did not confirm the cache clear within 30 s (got {got:?}):\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The power cut of a program running on the mount: freeze it, drop the
    /// cache, SIGKILL it and reap it. Returns what the freeze saw.
    pub fn power_cut(&mut self, child: &mut Child) -> Result<Freeze, String> {
        let pid = child.id() as i32;
        let freeze = freeze(pid);
        self.clear_cache()?;
        let _ = child.kill();
        let until = Instant::now() + Duration::from_secs(10);
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() >= until {
                return Err(format!("pid {pid} was not reaped within 10 s of SIGKILL"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(freeze)
    }

    /// Unmounts (bounded; lazily if it stays busy) and waits for LazyFS to exit.
    pub fn unmount(&mut self) -> Result<(), String> {
        let Some(mut child) = self.proc.take() else {
            return Ok(());
        };
        let until = Instant::now() + Duration::from_secs(10);
        let mut last: String;
        while self.mounted() {
            let out = if which("fusermount3") {
                Command::new("fusermount3")
                    .arg("-u")
                    .arg(&self.mnt)
                    .output()
            } else {
                Command::new("umount").arg(&self.mnt).output()
            };
            match out {
                Ok(o) if o.status.success() => break,
                Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= until {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
                let _ = child.kill();
                let _ = child.wait();
                self.done_reader = None;
                return Err(format!(
                    "{} stayed busy for 10 s ({last}); unmounted lazily",
                    self.mnt.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.done_reader = None;
        Ok(())
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if self.proc.is_some() && self.unmount().is_err() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// What freezing a process found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Freeze {
    /// Threads that had not stopped within the bound (still in a system call).
    pub running: usize,
    /// How long until every thread was stopped.
    pub took: Duration,
}

/// SIGSTOPs `pid` and waits (up to 10 s) until every thread is stopped: a
/// thread inside a system call (a write to LazyFS) stops only when it returns,
/// so after this the program has written all it ever will.
pub fn freeze(pid: i32) -> Freeze {
    let started = Instant::now();
    // SAFETY: signalling a child process of ours by pid.
    let rc = unsafe { libc::kill(pid, libc::SIGSTOP) };
    if rc != 0 {
        // It is gone already (reaped): nothing to freeze.
        return Freeze::default();
    }
    let until = started + Duration::from_secs(10);
    loop {
        let states = thread_states(pid);
        let running = states
            .iter()
            .filter(|s| !matches!(s, 'T' | 't' | 'Z' | 'X'))
            .count();
        if running == 0 || Instant::now() >= until {
            return Freeze {
                running,
                took: started.elapsed(),
            };
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The scheduler state letter of every thread of `pid` (`/proc/PID/task/*/stat`).
fn thread_states(pid: i32) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            // "tid (comm) S ...": comm may hold spaces and parentheses.
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.trim_start().chars().next()
        })
        .collect()
}
