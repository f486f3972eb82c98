//! The control plane's pure parts and its etcd client: flannel's network config and lease formats, subnet
//! allocation, the lease lifecycle state machine, the peer watch's resume point, the subnet.env file, backoff timing,
//! and the etcd store that reads and writes them.

pub mod alloc;
pub mod backoff;
pub mod config;
pub mod key;
pub mod lease;
pub mod lifecycle;
pub mod store;
pub mod subnet_env;
pub mod validate;
pub mod watch_cursor;
