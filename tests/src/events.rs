//! A `/v2/events` (server-sent events) reader for tests.

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

/// Subscribes to `url` (e.g. `http://gw/v2/events`); events arrive as (type, JSON). The
/// first one is `event_stream_attached`, once the subscription is live.
pub async fn subscribe(url: &str) -> mpsc::UnboundedReceiver<(String, Value)> {
    let response =
        reqwest::Client::new().get(url).header("Accept", "text/event-stream").send().await.expect("event stream");
    assert!(response.status().is_success(), "event stream: {}", response.status());
    let (sender, events) = mpsc::unbounded_channel();
    let mut body = response.bytes_stream();
    tokio::spawn(async move {
        let mut buffer = String::new();
        let mut event_type = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find('\n') {
                let line = buffer[..end].trim_end_matches('\r').to_owned();
                buffer.drain(..=end);
                if let Some(kind) = line.strip_prefix("event:") {
                    event_type = kind.trim().to_owned();
                } else if let Some(data) = line.strip_prefix("data:") {
                    let json = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                    if sender.send((event_type.clone(), json)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    events
}
