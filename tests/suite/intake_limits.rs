//! A stranger on the network cannot make intake work for long, hold memory, or fill the
//! store: signature headers are bounded, slow bodies are dropped, rejections are summarized.

use crate::common::{json, signed_now, unique_delivery_id, TestApp};

#[tokio::test]
async fn a_signature_header_with_thousands_of_entries_is_refused_with_a_400_naming_it() {
    // Arrange: a 1 MB body and 2,000 well-formed `v1,` entries, none of them right.
    let app = TestApp::spawn().await;
    let entry = format!("v1,{}", "A".repeat(43) + "=");
    let signature = vec![entry; 2000].join(" ");
    let mut delivery = signed_now("gitlab/push.branch", &unique_delivery_id())
        .with_header("webhook-signature", &signature);
    delivery.body = vec![b' '; 1024 * 1024];

    // Act
    let response = app.post("signed", &delivery).await;

    // Assert
    assert_eq!(response.status(), 400);
    let reason = json(response).await["error"].as_str().unwrap().to_owned();
    assert!(reason.starts_with("header webhook-signature: "), "{reason}");
    assert_eq!(app.jobs(), 0);
}
