//! The real `deploybot` binary, run as a user would, with everything it prints kept in files
//! so tests can read it back (and scan it for secrets).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_deploybot")
}

/// Runs `deploybot ARGS` to completion in `dir` with `env`.
pub fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(binary())
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("deploybot runs")
}

/// A running `deploybot serve`.
pub struct Server {
    child: Child,
    pub dir: PathBuf,
    pub address: String,
    log_path: PathBuf,
}

impl Server {
    /// Starts `deploybot serve --config CONFIG` in `dir` (so a relative `data_dir` lands
    /// there), waits until it answers /healthz, and learns its port from its log.
    pub fn start(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_args(
            dir,
            &["serve", "--config", &config.display().to_string()],
            env,
        )
    }

    pub fn start_args(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let log_path = dir.join(format!("serve-{n}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(binary())
            .current_dir(dir)
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("deploybot starts");
        let mut server = Server {
            child,
            dir: dir.to_owned(),
            address: String::new(),
            log_path,
        };
        server.address = format!("http://127.0.0.1:{}", server.wait_for_port());
        server
    }

    fn wait_for_port(&mut self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("deploybot exited with {status}; log:\n{}", self.log());
            }
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains("deploybot is listening")) {
                if let Some(port) = line
                    .split("port=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|p| p.parse().ok())
                {
                    return port;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("deploybot did not start listening; log:\n{}", self.log());
    }

    /// Posts a signed delivery to `/hooks/<project>`; returns the queued job's id.
    pub async fn post_delivery(&self, project: &str, delivery: &super::Delivery) -> i64 {
        let mut request = reqwest::Client::new()
            .post(format!("{}/hooks/{project}", self.address))
            .body(delivery.body.clone());
        for (k, v) in &delivery.headers {
            request = request.header(k, v);
        }
        let response = request.send().await.expect("deploybot answers");
        assert_eq!(response.status(), 202);
        super::json(response).await["job"]
            .as_i64()
            .expect("a job id")
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9` of a server that is replaced in place (then started anew).
    pub fn kill_hard_in_place(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill_hard(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }

    /// SIGTERM, then the exit status and the log.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status, self.log());
            }
            assert!(Instant::now() < deadline, "deploybot ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a config file for the binary into `dir`: listen on a random port, store in
/// `dir/data`, and the given `[[projects]]`.
pub fn write_config(dir: &Path, projects: &str) -> PathBuf {
    let path = dir.join("deploybot.toml");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\n[worker]\nenabled = false\n\n[log]\nfilter = \"debug\"\n\n{projects}"
    );
    std::fs::write(&path, toml).expect("config written");
    path
}
