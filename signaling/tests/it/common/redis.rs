//! A real `redis-server` (Debian package) for the registry and cluster
//! tests: a free loopback port, no persistence, killed on drop.

use signaling::registry::{DEFAULT_PREFIX, RedisRegistry};
use signaling::roomstore::RedisRoomStore;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// Generous: the machine running the tests may be busy.
pub const WAIT: Duration = Duration::from_secs(15);
pub const OP_TIMEOUT: Duration = Duration::from_millis(500);

/// A `redis-server` on a free loopback port, without persistence, killed on
/// drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "spreekkamer-registry-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // The port is free when we look; another process may take it before
        // redis-server binds it, so try a few.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let mut server = RedisServer {
                child: None,
                port,
                dir: dir.clone(),
            };
            if server.spawn().await {
                return server;
            }
            server.dir = PathBuf::new(); // not removed by this copy's drop
        }
        panic!("redis-server did not start");
    }

    /// Start (again) on `self.port`; false if it exited or never answered.
    pub async fn spawn(&mut self) -> bool {
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run /usr/bin/redis-server (Debian package redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                self.child = None;
                return false;
            }
            if ping(self.port).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
        false
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP / SIGCONT: a Redis that accepts and never answers.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub async fn registry(&self) -> RedisRegistry {
        RedisRegistry::connect(&self.url(), DEFAULT_PREFIX, OP_TIMEOUT)
            .await
            .expect("connect")
    }

    pub async fn room_store(&self) -> RedisRoomStore {
        RedisRoomStore::connect(&self.url(), DEFAULT_PREFIX, OP_TIMEOUT)
            .await
            .expect("connect")
    }

    /// A plain connection for writing what the registry would never write.
    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // A stopped process ignores nothing but SIGKILL; be sure.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}
