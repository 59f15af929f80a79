//! A trivial backend for the `proxy` scenario: the least an application behind tether's HTTP
//! proxy could do, so that what the scenario measures is tether's proxy path and not the
//! backend.
//!
//! `POST /connect` answers `{"result":{"user":"<n>"}}` (n counts connects), `POST /rpc`
//! echoes the request's `data` as `{"result":{"data":<data>}}`. Nothing is logged per
//! request; a body that is not JSON is a 400.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::post;
use axum::serve::ListenerExt as _;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The answer to the `n`th connect.
pub fn connect_answer(n: u64) -> String {
    format!("{{\"result\":{{\"user\":\"{n}\"}}}}")
}

#[derive(Deserialize)]
struct RpcBody<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// The answer to an rpc request: its `data`, unparsed, as the result's `data`.
pub fn rpc_answer(body: &[u8]) -> Result<String, serde_json::Error> {
    let req: RpcBody<'_> = serde_json::from_slice(body)?;
    Ok(match req.data {
        Some(data) => format!("{{\"result\":{{\"data\":{}}}}}", data.get()),
        None => "{\"result\":{}}".to_owned(),
    })
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn connect(State(count): State<Arc<AtomicU64>>) -> Response {
    json(connect_answer(count.fetch_add(1, Ordering::Relaxed) + 1))
}

async fn rpc(body: Bytes) -> Response {
    match rpc_answer(&body) {
        Ok(answer) => json(answer),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// The backend's routes.
pub fn router() -> Router {
    Router::new()
        .route("/connect", post(connect))
        .route("/rpc", post(rpc))
        .with_state(Arc::new(AtomicU64::new(0)))
}

/// Serves the backend on `addr` until the process is stopped, on `threads` runtime threads
/// (1: a current-thread runtime).
pub fn serve(addr: SocketAddr, threads: usize) -> anyhow::Result<()> {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let listener = listener.tap_io(|tcp| {
            // Best effort: answers are one write each, but Nagle must not hold one back.
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router()).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_answers_a_user() {
        let v: serde_json::Value = serde_json::from_str(&connect_answer(7)).unwrap();
        assert_eq!(v, serde_json::json!({"result": {"user": "7"}}));
    }

    #[test]
    fn rpc_echoes_data_as_it_came() {
        let body = br#"{"client":"c","transport":"websocket","protocol":"json","encoding":"json",
            "user":"1","method":"echo","data":{"i":3, "s":"x\"y"}}"#;
        assert_eq!(
            rpc_answer(body).unwrap(),
            r#"{"result":{"data":{"i":3, "s":"x\"y"}}}"#
        );
        assert_eq!(
            rpc_answer(br#"{"method":"m"}"#).unwrap(),
            r#"{"result":{}}"#
        );
        assert_eq!(rpc_answer(br#"{"data":null}"#).unwrap(), r#"{"result":{}}"#);
        assert!(rpc_answer(b"not json").is_err());
    }

    /// The routes over a real socket: what tether's proxy sends, what it gets back.
    #[tokio::test]
    async fn routes_answer_over_http() {
        use http_body_util::{BodyExt as _, Full};
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, router()).await });
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let post = |path: &str, body: &'static str| {
            hyper::Request::post(format!("http://{addr}{path}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap()
        };
        for (path, body, status, answer) in [
            (
                "/connect",
                r#"{"client":"c"}"#,
                200,
                r#"{"result":{"user":"1"}}"#,
            ),
            (
                "/connect",
                r#"{"client":"c"}"#,
                200,
                r#"{"result":{"user":"2"}}"#,
            ),
            (
                "/rpc",
                r#"{"method":"echo","data":[1]}"#,
                200,
                r#"{"result":{"data":[1]}}"#,
            ),
            ("/rpc", "{", 400, ""),
        ] {
            let response = client.request(post(path, body)).await.unwrap();
            assert_eq!(response.status().as_u16(), status, "{path} {body}");
            let got = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(std::str::from_utf8(&got).unwrap(), answer, "{path} {body}");
        }
        server.abort();
    }
}
