//! Operations: what weft tells an operator while it runs — the HTTP endpoints (/healthz, /readyz, /metrics,
//! /status) and the Prometheus metrics they render.

pub mod http;
pub mod metrics;
pub mod status;
