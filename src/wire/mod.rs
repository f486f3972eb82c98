//! Packet formats, pure and I/O-free: checked header views, VXLAN, flow hashing and the inbound checks.
//!
//! # Contract of the header views
//!
//! Each header weft reads or writes (`ethernet`, `ipv4`, `ipv6`, `udp`, `tcp`, `icmp`, `vxlan`) has a view
//! `Packet<T: AsRef<[u8]>>` (`Frame` for Ethernet, `Header` for VXLAN) over a buffer the caller owns, a
//! `mod field` naming each field's byte range, and one `emit` (on a small `Repr`) that writes the header.
//!
//! - `new_checked` (which runs `check_len`) is the only way untrusted bytes become a view. Once it has
//!   returned `Ok`, no accessor panics: every field it reads, and the header and payload slices, lie
//!   within the buffer. `new_unchecked` is for buffers the caller has already checked or is about to
//!   fill; on those, accessors may panic if the buffer is shorter than the header.
//! - Setters exist for `T: AsMut<[u8]>`; they write one field and check nothing. A setter that changes a
//!   length field (`set_total_len`, `set_header_len`, `set_len`) can make a later payload accessor panic
//!   if it claims more than the buffer holds: write lengths that fit.
//! - `emit` writes a whole header into a buffer of at least the header's length (it panics on a shorter
//!   one, which is a bug in the caller, never an effect of received bytes).
//! - Nothing here allocates: views borrow, `emit` writes in place.

use core::fmt;
use core::ops::Range;

pub mod batch;
pub mod csum;
mod drop;
pub mod ethernet;
pub mod filter;
pub mod flow;
pub mod gso;
pub mod icmp;
pub mod icmpv6;
pub mod inbound;
pub mod ipv4;
pub mod ipv6;
pub mod outbound;
pub mod outer;
pub mod peers;
pub mod segment;
pub mod tcp;
pub mod udp;
pub mod vxlan;
pub mod xdp_filter;

pub use drop::DropReason;

/// The byte range of a header field.
pub type Field = Range<usize>;

/// A buffer shorter than the header it should hold, or whose length fields do not fit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("truncated or malformed header")
    }
}

impl std::error::Error for Error {}

/// A big-endian 16-bit field; `b` is the field's two bytes.
#[inline(always)]
pub(crate) fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// A big-endian 32-bit field; `b` is the field's four bytes.
#[inline(always)]
pub(crate) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
