//! The promise users judge us by: a delivery answered 2xx is on disk, under load and across
//! a `kill -9`.

use std::sync::{Arc, Mutex};

use crate::common::binary::{write_config, Server};
use crate::common::{Delivery, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_deliveries_become_two_hundred_deliveries_and_jobs() {
    let app = TestApp::spawn().await;
    let deliveries: Vec<Delivery> = (0..200)
        .map(|_| Delivery::fixture("github/push.branch").with_unique_id())
        .collect();

    let answers =
        futures_util::future::join_all(deliveries.iter().map(|d| app.post("baxter", d))).await;

    assert!(answers.iter().all(|r| r.status() == 202));
    assert_eq!(app.deliveries().len(), 200);
    assert_eq!(app.jobs(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_delivery_survives_a_kill_9() {
    // Arrange: the real binary, and a stream of deliveries from 16 senders.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), crate::common::FIXTURE_PROJECTS);
    let server = Server::start(dir.path(), &config, &[]);
    let acknowledged = Arc::new(Mutex::new(Vec::<Delivery>::new()));
    let client = reqwest::Client::new();
    let url = format!("{}/hooks/baxter", server.address);
    let mut senders = Vec::new();
    for _ in 0..16 {
        let (client, url, acknowledged) = (client.clone(), url.clone(), acknowledged.clone());
        senders.push(tokio::spawn(async move {
            for _ in 0..200 {
                let delivery = Delivery::fixture("github/push.branch").with_unique_id();
                let mut request = client.post(&url).body(delivery.body.clone());
                for (k, v) in &delivery.headers {
                    request = request.header(k, v);
                }
                match request.send().await {
                    Ok(r) if r.status() == 202 => acknowledged.lock().unwrap().push(delivery),
                    _ => break, // the server is gone
                }
            }
        }));
    }

    // Act: kill -9 while deliveries are in flight, then start again on the same store.
    while acknowledged.lock().unwrap().len() < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.kill_hard();
    for sender in senders {
        sender.await.unwrap();
    }
    let restarted = Server::start(dir.path(), &config, &[]);

    // Assert: every 202 is there, with its job and its exact body.
    let reader = deploybot::store::Reader::open(&dir.path().join("data")).unwrap();
    let rows = reader.deliveries(100_000).unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 300);
    for delivery in acknowledged.iter() {
        let id = delivery.header("X-GitHub-Delivery").unwrap();
        let row = rows
            .iter()
            .find(|r| r.delivery_id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("acknowledged delivery {id} was lost"));
        assert!(row.job.is_some(), "{id} has its job");
        assert_eq!(
            reader.body(row.id).unwrap().as_deref(),
            Some(&delivery.body[..]),
            "{id}"
        );
    }
    // No half-written record: every stored row is complete and its body reads back whole.
    for row in rows.iter().filter(|r| r.outcome == "queued") {
        assert!(
            row.job.is_some() && row.event_json.is_some(),
            "row {} is complete",
            row.id
        );
        assert_eq!(reader.body(row.id).unwrap().map(|b| b.len()), Some(7603));
    }
    // And the restarted server takes new deliveries on that store.
    let delivery = Delivery::fixture("github/push.branch").with_unique_id();
    let mut request = client
        .post(format!("{}/hooks/baxter", restarted.address))
        .body(delivery.body.clone());
    for (k, v) in &delivery.headers {
        request = request.header(k, v);
    }
    assert_eq!(request.send().await.unwrap().status(), 202);
}

#[tokio::test]
async fn a_row_whose_body_never_reached_the_disk_is_removed_at_the_next_start() {
    // Arrange: three deliveries, then a crash that (as if the last body sync never finished)
    // loses the tail of the body segment while the row's commit survived.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), crate::common::FIXTURE_PROJECTS);
    let server = Server::start(dir.path(), &config, &[]);
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let delivery = Delivery::fixture("github/push.tag").with_unique_id();
        let mut request = client
            .post(format!("{}/hooks/drone", server.address))
            .body(delivery.body.clone());
        for (k, v) in &delivery.headers {
            request = request.header(k, v);
        }
        assert_eq!(request.send().await.unwrap().status(), 202);
    }
    server.kill_hard();
    let segment = dir.path().join("data/bodies/00000001.seg");
    let length = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(length - 100)
        .unwrap();

    // Act
    let restarted = Server::start(dir.path(), &config, &[]);

    // Assert: the torn row and its job are gone, the others are whole, and the log says so.
    let reader = deploybot::store::Reader::open(&dir.path().join("data")).unwrap();
    let rows = reader.deliveries(10).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        reader.job_counts().unwrap(),
        vec![("queued".to_string(), 2)]
    );
    for row in &rows {
        assert_eq!(reader.body(row.id).unwrap().map(|b| b.len()), Some(8120));
    }
    assert!(restarted
        .log()
        .contains("Removed deliveries whose body did not reach the disk"));
}
