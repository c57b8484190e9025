//! Starting the fleet's binaries as child processes (for `payctl demo`, `payctl bench` and the
//! end-to-end tests), with their logs prefixed or written to a file, and stopping them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub const INGRESS: &str = "payfleet-ingress";
pub const PAY_WORKER: &str = "payfleet-pay-worker";
pub const NOTIFY_WORKER: &str = "payfleet-notify-worker";
pub const FOLLOWUP_WORKER: &str = "payfleet-followup-worker";
pub const WECHAT_SIM: &str = "wechat-sim";

/// Where children's log lines go.
#[derive(Clone)]
pub enum Logs {
    /// To our stdout, each line prefixed with the child's short name (the demo).
    Prefixed,
    /// Appended to a file (tests, bench): quiet, and there to read when something fails.
    File(Arc<Mutex<std::fs::File>>),
}

impl Logs {
    pub fn file(path: &Path) -> anyhow::Result<Logs> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Logs::File(Arc::new(Mutex::new(file))))
    }

    fn write(&self, who: &str, line: &str) {
        match self {
            // A closed stdout (the terminal went away) loses the line, and nothing else.
            Logs::Prefixed => {
                use std::io::Write;
                let _ = writeln!(std::io::stdout().lock(), "[{who}] {line}");
            }
            Logs::File(file) => {
                use std::io::Write;
                let _ = writeln!(file.lock().expect("log file lock"), "[{who}] {line}");
            }
        }
    }
}

/// A running set of fleet binaries.
pub struct Fleet {
    bin_dir: PathBuf,
    /// PAYFLEET__… variables every child gets.
    env: HashMap<String, String>,
    logs: Logs,
    children: Vec<(String, Child)>,
    /// The base URLs the children printed ("<binary> listening on <url>"), by binary.
    urls: watch::Receiver<HashMap<String, String>>,
    urls_tx: watch::Sender<HashMap<String, String>>,
}

impl Fleet {
    pub fn new(bin_dir: PathBuf, env: HashMap<String, String>, logs: Logs) -> Fleet {
        let (urls_tx, urls) = watch::channel(HashMap::new());
        Fleet { bin_dir, env, logs, children: Vec::new(), urls, urls_tx }
    }

    /// Sets a variable every child started from now on gets.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.insert(key.to_owned(), value.to_owned());
    }

    /// Starts one more copy of `binary`, with `extra` variables on top of the fleet's.
    pub fn spawn(&mut self, binary: &str, extra: &[(&str, &str)]) -> anyhow::Result<u32> {
        self.spawn_with_args(binary, &[], extra)
    }

    /// `spawn` with command-line arguments.
    pub fn spawn_with_args(&mut self, binary: &str, args: &[String], extra: &[(&str, &str)]) -> anyhow::Result<u32> {
        let path = self.bin_dir.join(binary);
        if !path.exists() {
            bail!("{} not found; build the fleet with `cargo build --release --bins`", path.display());
        }
        let mut command = Command::new(&path);
        command.args(args);
        command.envs(&self.env).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        die_with_parent(&mut command);
        for (k, v) in extra {
            command.env(k, v);
        }
        let mut child = command.spawn().with_context(|| format!("starting {}", path.display()))?;
        let pid = child.id().unwrap_or_default();
        let short = binary.trim_start_matches("payfleet-").to_owned();
        let listening = Some((binary.to_owned(), self.urls_tx.clone()));
        forward(child.stdout.take().expect("piped"), short.clone(), self.logs.clone(), listening);
        forward(child.stderr.take().expect("piped"), short.clone(), self.logs.clone(), None);
        self.children.push((binary.to_owned(), child));
        Ok(pid)
    }

    /// Waits for the ingress to print its address, and answers it as `http://host:port`.
    pub async fn ingress_url(&mut self, within: Duration) -> anyhow::Result<String> {
        self.url_of(INGRESS, within).await
    }

    /// Waits for `binary` to print "<binary> listening on <url>", and answers the URL.
    pub async fn url_of(&mut self, binary: &str, within: Duration) -> anyhow::Result<String> {
        let urls = tokio::time::timeout(within, self.urls.wait_for(|urls| urls.contains_key(binary)))
            .await
            .with_context(|| format!("{binary} did not start listening in time (is its port taken? see its log)"))?
            .with_context(|| format!("{binary} log closed"))?;
        Ok(urls[binary].clone())
    }

    /// The process ids of the running copies of `binary`.
    pub fn pids(&self, binary: &str) -> Vec<u32> {
        self.children.iter().filter(|(name, _)| name == binary).filter_map(|(_, c)| c.id()).collect()
    }

    /// SIGKILLs every copy of `binary` and reaps them: a crash, not a shutdown.
    pub async fn kill(&mut self, binary: &str) {
        let mut kept = Vec::new();
        for (name, mut child) in self.children.drain(..) {
            if name == binary {
                let _ = child.kill().await;
            } else {
                kept.push((name, child));
            }
        }
        self.children = kept;
    }

    /// SIGTERMs every child and waits for them to finish their work in hand (SIGKILL after
    /// `grace`).
    pub async fn stop(&mut self, grace: Duration) {
        for (_, child) in &self.children {
            if let Some(pid) = child.id() {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
        }
        for (name, mut child) in self.children.drain(..) {
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(Ok(status)) if !status.success() => tracing::warn!(%name, %status, "child exited with failure"),
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(%name, "child did not stop in time, killing it");
                    let _ = child.kill().await;
                }
            }
        }
    }

    /// Whether any child has exited (it should not while the fleet runs).
    pub fn exited(&mut self) -> Option<String> {
        self.children.iter_mut().find_map(|(name, child)| match child.try_wait() {
            Ok(Some(status)) => Some(format!("{name} exited: {status}")),
            _ => None,
        })
    }
}

/// A child must not outlive whoever started it, even one killed with SIGKILL (which runs no
/// clean-up): on Linux the kernel sends the child SIGTERM when its parent dies, and the child
/// stops as on any SIGTERM (its deadline, `shutdown.deadline_secs`, bounds how long). The kernel
/// sends it when the *thread* that started the child ends: the fleet is started from the task
/// the runtime's `block_on` drives, whose thread lives as long as the process (the demo, the
/// benchmark) or the test.
fn die_with_parent(command: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: runs in the child between fork and exec, and only makes two system calls
    // (prctl, getppid), which are async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
            // The parent may have died before the request took effect: then nobody would
            // send the signal.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("the parent exited while starting this child"));
            }
            Ok(())
        });
    }
}

/// Copies a child's output to the logs, noting the URL of a "<binary> listening on <url>" line.
fn forward(
    stream: impl AsyncRead + Unpin + Send + 'static,
    who: String,
    logs: Logs,
    listening: Option<(String, watch::Sender<HashMap<String, String>>)>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some((binary, urls)) = &listening
                && let Some(url) = line.strip_prefix(&format!("{binary} listening on "))
            {
                urls.send_modify(|urls| {
                    urls.insert(binary.clone(), url.trim().to_owned());
                });
            }
            logs.write(&who, &line);
        }
    });
}

/// A token cancelled at the first SIGINT, SIGTERM or SIGHUP (the terminal closed): what stops
/// the demo and the benchmark, which then stop their fleet. Installed at once, so a signal
/// that comes early is not the default "die and leave the children".
pub fn stop_signals() -> tokio_util::sync::CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = tokio_util::sync::CancellationToken::new();
    let trigger = token.clone();
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        trigger.cancel();
    });
    token
}

/// The directory holding the fleet's binaries: next to the running one. Under `cargo run`
/// (which builds only the binary it runs) the siblings are built first.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the executable has no directory")?.to_path_buf();
    if let (Ok(cargo), Ok(manifest)) = (std::env::var("CARGO"), std::env::var("CARGO_MANIFEST_DIR")) {
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--bins", "--manifest-path"]).arg(Path::new(&manifest).join("Cargo.toml"));
        if release {
            build.arg("--release");
        }
        println!("building the fleet's binaries ({})…", if release { "release" } else { "debug" });
        let status = build.status().context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --bins failed");
        }
    }
    Ok(dir)
}
