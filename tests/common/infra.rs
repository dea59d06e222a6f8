//! The real parts the build tests need: the Docker engine, a registry with htpasswd auth,
//! and a git server holding the sample MyEvents repository. Under `CI=true` a missing part
//! fails the test; elsewhere the test says why it did not run and returns early.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Checks for a real part; `None` means "not here, and not under CI: skip".
pub fn require(part: &str, present: bool, how: &str) -> Option<()> {
    if present {
        return Some(());
    }
    let message = format!("{part} is not available: {how}");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message} (CI=true: a missing real part fails the suite)");
    }
    eprintln!("SKIPPED (not under CI): {message}");
    None
}

pub fn command_works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The engine and the base images the sample repository builds on.
pub fn docker_with_base_images() -> Option<()> {
    require(
        "the Docker engine",
        command_works("docker", &["info"]),
        "start dockerd (scripts/test.sh does)",
    )?;
    for image in [
        "deploybot-local/golang:1.19",
        "deploybot-local/node:18",
        "deploybot-local/static:latest",
    ] {
        require(
            image,
            command_works("docker", &["image", "inspect", image]),
            "run scripts/build-base-images.sh",
        )?;
    }
    Some(())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Debian's docker-registry on 127.0.0.1, with one htpasswd user.
pub struct Registry {
    pub address: String,
    pub username: String,
    pub password: String,
    child: Child,
    _dir: TempDir,
}

impl Registry {
    pub fn start() -> Option<Registry> {
        require(
            "docker-registry",
            Path::new("/usr/bin/docker-registry").exists(),
            "apt-get install docker-registry",
        )?;
        require(
            "htpasswd",
            command_works("which", &["htpasswd"]),
            "apt-get install apache2-utils",
        )?;
        let dir = tempfile::tempdir().expect("temp dir");
        let username = "deploybot".to_owned();
        let password = format!("registry-pw-{}", crate::common::unique_delivery_id());
        // The password goes in on stdin, never as an argument.
        let mut htpasswd = Command::new("htpasswd")
            .args([
                "-iBc",
                &dir.path().join("htpasswd").display().to_string(),
                &username,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("htpasswd runs");
        htpasswd
            .stdin
            .take()
            .expect("stdin")
            .write_all(password.as_bytes())
            .expect("password written");
        assert!(htpasswd.wait().expect("htpasswd ends").success());
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: deploybot-tests\n    path: {htpasswd}\n",
            root = dir.path().join("data").display(),
            htpasswd = dir.path().join("htpasswd").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("registry config");
        let child = serve_registry(dir.path(), port);
        Some(Registry {
            address: format!("127.0.0.1:{port}"),
            username,
            password,
            child,
            _dir: dir,
        })
    }

    /// Stops the registry (it refuses connections until [`Registry::restart`]).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port, with the same users and images.
    pub fn restart(&mut self) {
        self.stop();
        let port = self
            .address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the registry's port");
        self.child = serve_registry(self._dir.path(), port);
    }

    /// Pushes the local `image` as `repository:tag` with the docker CLI and returns the digest
    /// the registry holds it under. The CLI logs in with the password on stdin and a docker
    /// config of its own (nobody's `~/.docker` is touched); the local tag is removed again.
    pub async fn push(&self, image: &str, repository: &str, tag: &str) -> String {
        let config = tempfile::tempdir().expect("docker config dir");
        let remote = format!("{}/{repository}:{tag}", self.address);
        let login = [
            "login",
            "--username",
            &self.username,
            "--password-stdin",
            &self.address,
        ];
        docker_cli(config.path(), &login, Some(&self.password));
        docker_cli(config.path(), &["tag", image, &remote], None);
        docker_cli(config.path(), &["push", &remote], None);
        docker_cli(config.path(), &["rmi", &remote], None);
        self.digest(repository, tag)
            .await
            .unwrap_or_else(|| panic!("{remote} was pushed but the registry has no such tag"))
    }

    /// The digest the registry serves for `repository:tag` (None when it has no such tag).
    pub async fn digest(&self, repository: &str, tag: &str) -> Option<String> {
        let response = reqwest::Client::new()
            .head(format!("http://{}/v2/{repository}/manifests/{tag}", self.address))
            .basic_auth(&self.username, Some(&self.password))
            .header(
                "Accept",
                "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
            )
            .send()
            .await
            .expect("registry answers");
        if response.status() == 404 {
            return None;
        }
        assert_eq!(response.status(), 200, "registry HEAD {repository}:{tag}");
        response
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

impl Registry {
    /// Puts the static base image the fixtures build `FROM` where a builder on the cluster
    /// finds it (its short name resolved in this registry).
    pub async fn push_static_base(&self) {
        self.push(
            "deploybot-local/static:latest",
            "deploybot-local/static",
            "latest",
        )
        .await;
    }

    /// The labels of the image the registry serves as `repository:tag` (from its config blob).
    pub async fn labels(&self, repository: &str, tag: &str) -> serde_json::Value {
        let get = |path: String, accept: &'static str| {
            reqwest::Client::new()
                .get(format!("http://{}/v2/{repository}/{path}", self.address))
                .basic_auth(&self.username, Some(&self.password))
                .header("Accept", accept)
                .send()
        };
        let manifest: serde_json::Value = get(
            format!("manifests/{tag}"),
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .await
        .expect("registry answers")
        .json()
        .await
        .expect("a manifest");
        let config = manifest["config"]["digest"]
            .as_str()
            .expect("a config digest");
        let blob: serde_json::Value = get(format!("blobs/{config}"), "*/*")
            .await
            .expect("registry answers")
            .json()
            .await
            .expect("an image config");
        blob["config"]["Labels"].clone()
    }
}

/// Runs the docker CLI with `config` as its config directory, `stdin` written to it; panics
/// with its output when it fails.
fn docker_cli(config: &Path, args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new("docker")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker CLI runs");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(stdin) = stdin {
        input.write_all(stdin.as_bytes()).expect("stdin written");
    }
    drop(input);
    let output = child.wait_with_output().expect("docker CLI ends");
    assert!(
        output.status.success(),
        "docker {}: {}{}",
        args[0],
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// docker-registry serving `dir/config.yml` on `port`, logging to `dir/registry.log`.
fn serve_registry(dir: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("registry.log"))
        .expect("log");
    let child = Command::new("/usr/bin/docker-registry")
        .args(["serve", &dir.join("config.yml").display().to_string()])
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("docker-registry starts");
    wait_for_port(port, "docker-registry");
    child
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A git repository made from `tests/fixtures/myevents`, served by `git daemon` (the git
/// protocol deploybot fetches over, like a forge's clone URL).
pub struct GitServer {
    pub url: String,
    work: PathBuf,
    bare: PathBuf,
    child: Child,
    _dir: TempDir,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "MyEvents Dev")
        .env("GIT_AUTHOR_EMAIL", "dev@myevents.test")
        .env("GIT_COMMITTER_NAME", "MyEvents Dev")
        .env("GIT_COMMITTER_EMAIL", "dev@myevents.test")
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

impl GitServer {
    /// Commits the sample repository and serves it; returns the server and the commit.
    pub fn start() -> Option<(GitServer, String)> {
        GitServer::start_fixture("myevents")
    }

    /// Commits `tests/fixtures/<fixture>` as a repository and serves it.
    pub fn start_fixture(fixture: &str) -> Option<(GitServer, String)> {
        require(
            "git",
            command_works("git", &["--version"]),
            "apt-get install git",
        )?;
        let dir = tempfile::tempdir().expect("temp dir");
        let work = dir.path().join("work");
        copy_tree(
            &crate::common::fixtures::fixtures_dir().join(fixture),
            &work,
        );
        git(&work, &["init", "--quiet", "--initial-branch=master"]);
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "--quiet", "-m", "MyEvents sample"]);
        let sha = git(&work, &["rev-parse", "HEAD"]);
        let root = dir.path().join("served");
        std::fs::create_dir_all(&root).expect("mkdir");
        let bare = root.join("myevents.git");
        git(
            dir.path(),
            &[
                "clone",
                "--quiet",
                "--bare",
                &work.display().to_string(),
                &bare.display().to_string(),
            ],
        );
        let port = free_port();
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", root.display()),
                &root.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        wait_for_port(port, "git daemon");
        let server = GitServer {
            url: format!("git://127.0.0.1:{port}/myevents.git"),
            work,
            bare,
            child,
            _dir: dir,
        };
        Some((server, sha))
    }

    /// Applies `change` to the working copy, commits, and pushes `branch` (and `tag`, if
    /// given) to the served repository; returns the new commit.
    pub fn commit(
        &self,
        message: &str,
        branch: &str,
        tag: Option<&str>,
        change: impl FnOnce(&Path),
    ) -> String {
        change(&self.work);
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "--quiet", "--allow-empty", "-m", message],
        );
        let sha = git(&self.work, &["rev-parse", "HEAD"]);
        let bare = self.bare.display().to_string();
        git(
            &self.work,
            &[
                "push",
                "--quiet",
                "--force",
                &bare,
                &format!("HEAD:refs/heads/{branch}"),
            ],
        );
        if let Some(tag) = tag {
            self.tag(tag, &sha);
        }
        sha
    }

    /// Points `git_ref` of the served repository at `sha`, as a forge keeps a pull request's
    /// head (`refs/pull/N/head`) in the base repository.
    pub fn set_ref(&self, git_ref: &str, sha: &str) {
        let bare = self.bare.display().to_string();
        git(
            &self.work,
            &[
                "push",
                "--quiet",
                "--force",
                &bare,
                &format!("{sha}:{git_ref}"),
            ],
        );
    }

    /// Tags `sha` in the served repository.
    pub fn tag(&self, tag: &str, sha: &str) {
        git(&self.work, &["tag", "--force", tag, sha]);
        self.set_ref(&format!("refs/tags/{tag}"), sha);
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many containers of `job` the engine holds for the deploybot whose store is `data_dir`
/// (every test's store numbers its jobs from 1, so the instance label tells them apart).
pub fn job_containers(data_dir: &Path, job: i64) -> usize {
    let instance = deploybot::executor::instance_id(data_dir);
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=deploybot.job={job}"),
            "--filter",
            &format!("label=deploybot.instance={instance}"),
        ])
        .output()
        .expect("docker ps runs");
    String::from_utf8_lossy(&out.stdout).lines().count()
}
