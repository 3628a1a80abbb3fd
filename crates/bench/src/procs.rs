//! Child processes (a private `redis-server`, the service binaries) and
//! their memory as `/proc/<pid>/status` reports it.

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// A `VmHWM`/`VmRSS`-style field of `/proc/<pid>/status`, in MiB.
pub fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, field).map(|kib| kib / 1024.0)
}

fn parse_status_kib(status: &str, field: &str) -> Option<f64> {
    status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// A free loopback port (bound then released: the child binds it next).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process that is killed (by its own id) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log).with_context(|| log.display().to_string())?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Self { name: name.to_owned(), child })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when it has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!("{} exited with {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private `redis-server` on a free loopback port, without persistence.
#[derive(Debug)]
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
}

impl Redis {
    /// Starts it and waits until it accepts connections.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir);
        let mut proc = Proc::spawn("redis-server", cmd, &dir.join("redis.log"))
            .context("redis-server (scripts/setup.sh installs it)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            proc.check_running()?;
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not listen in 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { proc, port })
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_kib() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kib(s, "VmHWM"), Some(2048.0));
        assert_eq!(parse_status_kib(s, "VmRSS"), Some(1024.0));
        assert_eq!(parse_status_kib(s, "VmRS"), None);
        let me = status_mib(std::process::id(), "VmHWM").expect("this process's status");
        assert!(me > 1.0, "{me}");
    }
}
