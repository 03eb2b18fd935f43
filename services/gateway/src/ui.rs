//! The operators' web UI: hand-written HTML, CSS and JavaScript (no bundler, no third-party
//! code), embedded in the binary and served by every gateway itself — a standby serves the
//! UI, and the API calls the page makes (`/v2/…`) are forwarded to the leader as any other.
//!
//! Every page is the same document (`index.html`); the script reads `location.pathname` and
//! draws the page it names:
//!
//! - `/`, `/ui`: the apps, each with its status and why (waiting, failing, deploying), and a
//!   form for a new app;
//! - `/ui/apps/{id}` (`id` may hold slashes: `/ui/apps/prod/web`): one app — its
//!   configuration and editor, versions, tasks and their output, deployment, actions;
//! - `/ui/cluster`: masters, gateways and agents.
//!
//! The assets hold no data; what the page shows comes from the API. With credentials
//! configured (`auth.http_credentials`) the gateway's guard asks for them here too (every
//! path but `/ping` and `/health`), so the browser prompts once, before the UI loads, and
//! sends them with each call the page makes. Responses carry a strict Content Security
//! Policy: only this origin's script, styles and API, nothing inline, no framing.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// Where the assets are served (below `/ui/`, apart from the pages' paths).
const SCRIPT_PATH: &str = "/ui/assets/app.js";
const STYLE_PATH: &str = "/ui/assets/style.css";

/// Only this origin's script, styles and API (`connect-src`); nothing inline, no plugins,
/// no framing (clickjacking), forms post nowhere (the script sends JSON itself).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Router {
    Router::new()
        .route("/", get(page))
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/ui/apps", get(page))
        .route("/ui/apps/", get(page))
        .route("/ui/apps/{*id}", get(page))
        .route("/ui/cluster", get(page))
        .route(SCRIPT_PATH, get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route(STYLE_PATH, get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

/// Any page: the one document, whose script draws what the path names.
async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Revalidated at each load: an upgraded gateway serves its own UI at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_loads_the_assets_it_is_served_with() {
        assert!(INDEX.contains(SCRIPT_PATH) && INDEX.contains(STYLE_PATH));
        // No inline script or style: the policy would refuse them.
        assert!(!INDEX.contains("<script>") && !INDEX.contains("<style") && !INDEX.contains(" style="));
    }
}
