//! Packet formats, pure and I/O-free: inner IPv4 views, VXLAN, flow hashing and the inbound checks.

pub mod csum;
mod drop;
pub mod ethernet;
pub mod filter;
pub mod flow;
pub mod gso;
pub mod inbound;
pub mod ipv4;
pub mod outer;
pub mod segment;
pub mod vxlan;
pub mod xdp_filter;

pub use drop::DropReason;
