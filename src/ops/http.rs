//! The HTTP endpoints of a running daemon (/healthz, /readyz, /metrics, /status) and the client `weft status` uses.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::ops::status::StatusSource;

fn reply(code: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn route(source: &dyn StatusSource, path: &str) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => {
            if source.ready() {
                reply(StatusCode::OK, TEXT, "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "not ready: subnet.env not written or data plane not up yet\n".into(),
                )
            }
        }
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::ops::metrics::render(&source.metrics()),
        ),
        "/status" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&source.status()).expect("status serialises"),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /healthz, /readyz, /metrics or /status\n".into(),
        ),
    }
}

/// Serves the endpoints on `listener` until the process exits.
pub async fn serve(listener: TcpListener, source: Arc<dyn StatusSource>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = route(source.as_ref(), req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Why a request to a daemon's endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot reach the weft daemon at {addr}: {source}; is `weft run` running with this --healthz-ip/--healthz-port?")]
    Connect {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP to {addr} failed: {source}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("cannot request {path}: {source}")]
    Request {
        path: String,
        #[source]
        source: hyper::http::Error,
    },
}

/// GETs `path` from a daemon's HTTP endpoint; returns (status code, body).
pub async fn get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), HttpError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| HttpError::Connect { addr, source })?;
    let http = |source| HttpError::Http { addr, source };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .map_err(|source| HttpError::Request {
            path: path.to_string(),
            source,
        })?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}
