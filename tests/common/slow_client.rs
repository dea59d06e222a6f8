//! A client on a raw TCP socket that sends a delivery's headers and then only part of its body,
//! slowly or not at all: what a stranger holding connections open looks like.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Delivery, TestApp};

/// Long enough for any answer a test waits for; reaching it fails the test instead of hanging.
const GUARD: Duration = Duration::from_secs(90);

impl TestApp {
    /// Opens a connection, sends `delivery`'s headers declaring `declared` body bytes, then
    /// the first `sent` bytes of a body, and leaves the rest unsent.
    pub async fn start_body(
        &self,
        project: &str,
        delivery: &Delivery,
        declared: usize,
        sent: usize,
    ) -> TcpStream {
        let address = self.address.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).await.expect("app accepts");
        let mut head = format!(
            "POST /hooks/{project} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {declared}\r\n"
        );
        for (name, value) in &delivery.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.expect("head sent");
        stream
            .write_all(&vec![b' '; sent])
            .await
            .expect("body start sent");
        stream
    }
}

/// Everything the server writes until it closes the connection.
pub async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(GUARD, stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .expect("the answer is read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends one more body byte every `every` until the server stops reading or closes, then
/// returns everything the server wrote.
pub async fn trickle_until_closed(stream: TcpStream, every: Duration) -> String {
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        while writer.write_all(b" ").await.is_ok() {
            tokio::time::sleep(every).await;
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(GUARD, reader.read_to_end(&mut answer)).await;
    trickle.abort();
    read.expect("the server closes the connection")
        .expect("the answer is read");
    String::from_utf8_lossy(&answer).into_owned()
}
