//! Running the real binary: a command run to its end within a deadline, a server that is ready,
//! a closed port, and a terminal to write to.

use std::{
    io::Read,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::common;

/// A password to look for in everything the binary writes.
pub const SECRET: &str = "Tr0ub4dor-s3cret";

/// A loopback port nothing listens on (bound a moment ago, then released).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What a finished command wrote.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Both streams, for checks that nothing anywhere shows a secret.
    pub fn everything(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `command` to its end, which must come within `within`: a command still running then
/// is killed and fails the test (a server that should have refused to start, say).
pub fn finish_within(mut command: Command, within: Duration) -> Ran {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still ran after {within:?}; stderr:\n{}", stderr.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

fn drain(mut stream: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// `ensemble` started by `command` (which says where to listen), killed when dropped.
pub struct Server {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `command` and waits until `/readyz` at `port` answers 200.
    pub async fn ready(mut command: Command, port: u16) -> Self {
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (mut pipe, log) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                log.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        let mut server = Self { child, stderr };
        server.until_ready(port).await;
        server
    }

    async fn until_ready(&mut self, port: u16) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the server exited ({status}):\n{}", self.stderr());
            }
            let answer = client.get(format!("http://127.0.0.1:{port}/readyz")).send().await;
            if answer.is_ok_and(|r| r.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server was not ready within 60 s:\n{}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ensemble` with a SQLite database and a dev key in `dir`, listening where `listen` says.
pub fn serving(dir: &Path, listen: &str) -> Command {
    common::install_dev_key(&dir.join("data"));
    let mut command = common::ensemble();
    command
        .env("DATABASE_URL", format!("sqlite://{}/serve.db", dir.display()))
        .env("ENSEMBLE_DATA_DIR", dir.join("data"))
        .env("ENSEMBLE_LISTEN", listen);
    command
}

/// Runs `command` with its stderr on a terminal (a pseudo-terminal); answers what it wrote there.
pub fn stderr_on_a_terminal(mut command: Command) -> String {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut controller, mut terminal) = (0, 0);
    // SAFETY: openpty writes two new descriptors into the integers it is given; null name,
    // termios and window size are allowed.
    let opened = unsafe {
        libc::openpty(&mut controller, &mut terminal, std::ptr::null_mut(), std::ptr::null(), std::ptr::null())
    };
    assert_eq!(opened, 0, "a pseudo-terminal opens");
    // SAFETY: both descriptors were just opened and are owned here alone.
    let (controller, terminal) = unsafe { (std::fs::File::from_raw_fd(controller), OwnedFd::from_raw_fd(terminal)) };
    let written = drain(controller);
    let status = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(terminal)).status().unwrap();
    drop(command);
    assert!(status.success(), "{status}");
    written.join().unwrap()
}
