//! A server process started by a test: its log, read as it is written, and the address its
//! ready line names. The child listens on `127.0.0.1:0` and says which port it bound. A port
//! probed free and handed to the child could be taken in between by one of the servers the
//! other tests start at the same time, and the test would then talk to that server instead.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::Child,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// What the child wrote to stdout and stderr, line by line.
#[derive(Clone)]
pub struct ServedLog {
    lines: Arc<Mutex<Vec<String>>>,
    /// Streams not read to their end yet.
    open: Arc<AtomicUsize>,
}

impl ServedLog {
    /// Follows the child's stdout and stderr; both must be piped.
    pub fn follow(child: &mut Child) -> Self {
        let log = Self { lines: Arc::default(), open: Arc::new(AtomicUsize::new(2)) };
        log.collect(child.stdout.take().expect("stdout is piped"));
        log.collect(child.stderr.take().expect("stderr is piped"));
        log
    }

    fn collect(&self, output: impl Read + Send + 'static) {
        let (lines, open) = (self.lines.clone(), self.open.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Every line, once the child has exited and both streams are read to their end.
    pub async fn all(&self) -> Vec<String> {
        let ended = async {
            while self.open.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), ended).await.expect("the child's output ends");
        self.lines()
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The address the ready line names, once the child has written it.
    pub fn address(&self) -> Option<SocketAddr> {
        self.lines.lock().unwrap().iter().find_map(|line| ready_address(line))
    }

    /// Waits until the ready line names the address; panics if the child exits first or the
    /// line does not come `within`.
    pub async fn listening(&self, child: &mut Child, within: Duration) -> SocketAddr {
        let deadline = Instant::now() + within;
        loop {
            if let Some(addr) = self.address() {
                return addr;
            }
            if let Some(exit) = child.try_wait().unwrap() {
                panic!("the server exited ({exit}) before it was ready:\n{}", self.lines().join("\n"));
            }
            assert!(Instant::now() < deadline, "no ready line within {within:?}:\n{}", self.lines().join("\n"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The address in `Ensemble is ready: GraphiQL at http://<address>/graphql, …`.
fn ready_address(line: &str) -> Option<SocketAddr> {
    let rest = line.split_once("Ensemble is ready: GraphiQL at http://")?.1;
    rest.split_once('/')?.0.parse().ok()
}
