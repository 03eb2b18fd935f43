//! `/v2/events`: the event stream, as server-sent events.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::connect_info::ConnectInfo;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde_json::json;

use crate::Gateway;
use crate::app;
use crate::events::Delivery;

/// `GET /v2/events`: server-sent events; `?event_type=a&event_type=b` filters. The first event,
/// `event_stream_attached`, names the caller's address (`remoteAddress`), as Marathon's does.
pub(super) async fn stream(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    uri: axum::http::Uri,
) -> Response {
    let wanted: Vec<String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| *key == "event_type")
        .map(|(_, value)| value.to_owned())
        .collect();
    let _ = headers;
    let remote_address = peer.map(|Extension(ConnectInfo(address))| address.ip().to_string());
    let attached = json!({
        "eventType": "event_stream_attached",
        "remoteAddress": remote_address,
        "timestamp": app::Timestamp::now().to_string(),
    });
    let first = futures::stream::iter([Ok::<_, Infallible>(
        SseEvent::default().event("event_stream_attached").data(attached.to_string()),
    )]);
    let shutdown = gateway.shutdown.clone();
    let live = gateway
        .events
        .deliveries(wanted)
        .map(|delivery| {
            Ok::<_, Infallible>(match delivery {
                Delivery::Event(event) => SseEvent::default().event(event.event_type).data(event.json.to_string()),
                Delivery::Lagged(missed) => {
                    let lagged = json!({
                        "eventType": "event_stream_lagged",
                        "missedEvents": missed,
                        "message": "this stream fell behind and is closed; reconnect and re-read the state",
                        "timestamp": app::Timestamp::now().to_string(),
                    });
                    SseEvent::default().event("event_stream_lagged").data(lagged.to_string())
                }
            })
        })
        .take_until(async move { shutdown.cancelled().await });
    let stream: std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>> =
        Box::pin(first.chain(live));
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}
