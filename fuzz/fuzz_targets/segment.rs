//! Fuzzes outbound segmentation: any packet and segment size, split into a train or into per-segment headers
//! with the payload left in place, never panics, and the two agree byte for byte; IPv4 and IPv6.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::wire::segment::{split_headers, split_into_train};

fuzz_target!(|data: &[u8]| {
    let Some((head, packet)) = data.split_first_chunk::<3>() else {
        return;
    };
    let seg = usize::from(u16::from_le_bytes([head[0], head[1]]));
    let udp = head[2] & 1 == 1;
    // Second bit: the rest behind a valid IPv6 header (TCP or UDP next), to reach the IPv6 layout.
    let with_v6;
    let packet = if head[2] & 2 == 2 {
        let len = packet.len().min(usize::from(u16::MAX));
        let mut p = vec![0x60, 0, 0, 0, 0, 0, if udp { 17 } else { 6 }, 64];
        p[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        p.extend_from_slice(&[0xfc; 32]);
        p.extend_from_slice(&packet[..len]);
        with_v6 = p;
        &with_v6[..]
    } else {
        packet
    };
    let prefix = [0xabu8; 22];
    let mut train = vec![0u8; 256 * 1024];
    let mut heads = vec![0u8; 256 * 1024];
    let t = split_into_train(packet, seg, udp, prefix.len(), &mut train);
    let s = split_headers(packet, seg, udp, &prefix, &mut heads);
    match (t, s) {
        (Ok(t), Ok(s)) => {
            assert_eq!((t.count, t.stride, t.len), (s.count, s.stride(), s.len()));
            let mut at = 0;
            for i in 0..s.count {
                let (h, b) = (s.head(i), s.body(i));
                assert_eq!(&train[at + prefix.len()..at + h.len()], &h[prefix.len()..]);
                assert_eq!(&train[at + h.len()..at + h.len() + b.len()], b);
                at += h.len() + b.len();
            }
            assert_eq!(at, t.len);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (t, s) => panic!("train {t:?} but split {:?}", s.map(|s| s.count)),
    }
});
