//! WireGuard keys as flannel and `wg` write them: 32 bytes in standard base64 (44 characters), pure.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Decodes a base64 WireGuard key (surrounding whitespace, such as a key file's newline, is ignored).
pub fn decode_key(s: &str) -> Result<[u8; 32], String> {
    let s = s.trim();
    let bytes = STANDARD
        .decode(s)
        .map_err(|_| format!("{:?} is not base64", abbreviate(s)))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("decodes to {} bytes, not 32", bytes.len()))
}

/// Encodes a key as base64.
pub fn encode_key(k: &[u8; 32]) -> String {
    STANDARD.encode(k)
}

/// The start of a possibly secret string, for an error message.
fn abbreviate(s: &str) -> String {
    match s.char_indices().nth(6) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// A WireGuard public key, written as base64 (in leases, status and the saved state).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WgKey(pub [u8; 32]);

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_key(&self.0))
    }
}

impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgKey({self})")
    }
}

impl FromStr for WgKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        decode_key(s).map(WgKey)
    }
}

impl Serialize for WgKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for WgKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_ones_say_why() {
        let k = WgKey([7; 32]);
        let s = k.to_string();
        assert_eq!(s.len(), 44);
        assert_eq!(s.parse::<WgKey>().unwrap(), k);
        assert_eq!(decode_key(&format!("  {s}\n")).unwrap(), [7; 32]);
        assert!(decode_key("not base64!")
            .unwrap_err()
            .contains("not base64"));
        assert!(decode_key("AAAA").unwrap_err().contains("3 bytes, not 32"));
        // A long secret is not echoed whole.
        assert!(!decode_key("supersecretvalue!!")
            .unwrap_err()
            .contains("secretvalue"));
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<WgKey>(&json).unwrap(), k);
    }
}
