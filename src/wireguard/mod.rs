//! The WireGuard backend's state: this host's key (`keyfile`) and its peers' sessions (`node`), which the
//! userspace data plane's workers seal and open packets with.
//!
//! The protocol itself (Noise IK handshake, cookies, timers, rekeying, the replay window and the
//! ChaCha20-Poly1305 transport) is boringtun's `noise` module; weft keeps one `Tunn` per peer lease, finds
//! peers by key, index and address, enforces cryptokey routing (a peer's packets must come from its
//! subnet) and moves trains of packets through it.

pub mod keyfile;
pub mod node;

pub use node::{Node, PeerStatus};
