//! The data directory fills up: intake answers 503 (never 2xx without a record), answers 202
//! again once space returns, and nothing recorded before is damaged.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::infra::require;
use crate::common::{Delivery, TestApp};

/// A 16 MiB tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        require(
            "a tmpfs mount (root)",
            mounted,
            "run the drill as root, or where mount -t tmpfs is allowed",
        )?;
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system to the last byte; returns the filler file.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while file.write_all(&small).is_ok() {}
        while file.write_all(&[0u8]).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn config() -> String {
    "[server]\n\n[worker]\nenabled = false\n\n[recovery]\nenabled = false\n\n[[projects]]\nname = \"drone\"\nforge = \"github\"\nrepository = \"bradrydzewski/drone-test-go\"\nwebhook_secret = \"deploybot-test-secret\"\n".to_owned()
}

fn delivery() -> Delivery {
    Delivery::fixture("github/push.tag").with_unique_id()
}

#[tokio::test]
async fn a_full_data_directory_answers_503_records_nothing_half_and_recovers_when_space_returns() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let data = disk.path().join("data");
    let app = TestApp::spawn_config_in(&data, &config()).await;
    let mut before = Vec::new();
    for _ in 0..5 {
        let sent = delivery();
        assert_eq!(app.post("drone", &sent).await.status(), 202);
        before.push(sent);
    }

    let filler = disk.fill();
    let mut refused = 0;
    for _ in 0..10 {
        let sent = delivery();
        let status = app.post("drone", &sent).await.status().as_u16();
        let id = sent.header("X-GitHub-Delivery").unwrap().to_owned();
        let recorded = app
            .deliveries()
            .iter()
            .any(|d| d.delivery_id.as_deref() == Some(id.as_str()));
        if (200..300).contains(&status) {
            assert!(recorded, "{id} answered {status} but is not recorded");
        } else {
            assert_eq!(
                status, 503,
                "a full disk is the store's trouble, not the sender's"
            );
            assert!(!recorded, "{id} refused but recorded");
            refused += 1;
        }
    }
    assert!(refused >= 9, "only {refused} of 10 refused on a full disk");

    std::fs::remove_file(filler).unwrap();
    let mut accepted = false;
    for _ in 0..20 {
        if app.post("drone", &delivery()).await.status() == 202 {
            accepted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(accepted, "intake answers 202 again once space returns");
    app.stop().await;

    // A new process on the same store: everything recorded before the disk filled is whole.
    let again = TestApp::spawn_config_in(&data, &config()).await;
    let rows = again.deliveries();
    let reader = again.reader();
    for sent in &before {
        let id = sent.header("X-GitHub-Delivery").unwrap();
        let row = rows
            .iter()
            .find(|d| d.delivery_id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("{id} lost"));
        assert_eq!(row.outcome, "queued");
        assert_eq!(
            reader.body(row.id).unwrap().as_deref(),
            Some(sent.body.as_slice()),
            "{id}: its body is intact"
        );
    }
    assert_eq!(again.post("drone", &delivery()).await.status(), 202);
    again.stop().await;
}
