//! Batching of small outbound datagrams: consecutive packets of one inner flow to one peer, of one size
//! (the last may be shorter), are laid out as one train and leave in one UDP GSO send instead of one
//! send each (wireguard-go does the same per endpoint). Pure bookkeeping: where the next datagram goes in
//! the caller's train buffer, and when the train must leave first.
//!
//! Keyed by flow and not only by peer: a flow's datagrams must keep their outer source port (the receiver
//! spreads flows over its workers by it) and their order.

use std::net::IpAddr;

use super::segment::Train;

/// Datagrams one batch holds at most (the kernel's UDP GSO limit on older kernels).
pub const MAX_DATAGRAMS: usize = 64;

/// The train of small datagrams being gathered for one (peer, flow).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SmallBatch {
    /// The peer and inner flow of the datagrams held; None while empty.
    key: Option<(IpAddr, u32)>,
    /// The size of every datagram but a shorter last one.
    stride: usize,
    count: usize,
    len: usize,
    /// A shorter datagram ended the train: nothing more may follow.
    closed: bool,
}

impl SmallBatch {
    /// Where a datagram of `size` bytes for `dst` and `flow` goes in the train buffer (of `capacity`
    /// bytes), or None if the held train must be taken first (another peer or flow, a larger size, a
    /// closed or full train). An empty batch takes any datagram that fits the buffer.
    #[inline]
    pub fn slot(&self, dst: IpAddr, flow: u32, size: usize, capacity: usize) -> Option<usize> {
        let Some(key) = self.key else {
            return (size <= capacity).then_some(0);
        };
        let joins = key == (dst, flow)
            && !self.closed
            && size <= self.stride
            && self.count < MAX_DATAGRAMS
            && self.len + size <= capacity;
        joins.then_some(self.len)
    }

    /// Records that a datagram of `size` bytes was written at the slot `slot` gave for it.
    #[inline]
    pub fn commit(&mut self, dst: IpAddr, flow: u32, size: usize) {
        if self.key.is_none() {
            *self = SmallBatch {
                key: Some((dst, flow)),
                stride: size,
                count: 1,
                len: size,
                closed: false,
            };
            return;
        }
        self.count += 1;
        self.len += size;
        self.closed = size < self.stride;
    }

    /// Whether nothing is held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.key.is_none()
    }

    /// The held train (peer, flow, layout), leaving the batch empty.
    #[inline]
    pub fn take(&mut self) -> Option<(IpAddr, u32, Train)> {
        let (dst, flow) = self.key?;
        let t = Train {
            count: self.count,
            stride: self.stride,
            len: self.len,
        };
        *self = SmallBatch::default();
        Some((dst, flow, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 250, 0, 2));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 250, 0, 3));

    /// Offers each (dst, flow, size) in turn, taking the train whenever it must leave first; returns the
    /// trains in the order they left and checks every datagram's offset.
    fn run(packets: &[(IpAddr, u32, usize)], capacity: usize) -> Vec<(IpAddr, u32, Train)> {
        let mut b = SmallBatch::default();
        let mut out = Vec::new();
        for &(dst, flow, size) in packets {
            let at = match b.slot(dst, flow, size, capacity) {
                Some(at) => at,
                None => {
                    out.extend(b.take());
                    b.slot(dst, flow, size, capacity)
                        .expect("an empty batch takes it")
                }
            };
            assert_eq!(at, b.len, "datagrams are laid out back to back");
            b.commit(dst, flow, size);
        }
        out.extend(b.take());
        out
    }

    fn train(count: usize, stride: usize, len: usize) -> Train {
        Train { count, stride, len }
    }

    #[test]
    fn same_flow_same_size_becomes_one_train() {
        let t = run(&[(A, 7, 100); 5], 65_536);
        assert_eq!(t, vec![(A, 7, train(5, 100, 500))]);
    }

    #[test]
    fn a_shorter_datagram_ends_the_train_and_a_longer_one_starts_another() {
        let t = run(
            &[(A, 7, 100), (A, 7, 100), (A, 7, 60), (A, 7, 60), (A, 7, 80)],
            65_536,
        );
        assert_eq!(
            t,
            vec![
                (A, 7, train(3, 100, 260)),
                (A, 7, train(1, 60, 60)),
                (A, 7, train(1, 80, 80))
            ]
        );
        // Smaller after smaller: the first shorter one closed the train.
        let t = run(&[(A, 7, 100), (A, 7, 60), (A, 7, 60)], 65_536);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn another_peer_or_flow_takes_the_train_first_keeping_order() {
        let t = run(
            &[(A, 7, 100), (A, 8, 100), (B, 8, 100), (B, 8, 100)],
            65_536,
        );
        assert_eq!(
            t,
            vec![
                (A, 7, train(1, 100, 100)),
                (A, 8, train(1, 100, 100)),
                (B, 8, train(2, 100, 200))
            ]
        );
    }

    #[test]
    fn full_trains_leave_by_count_and_by_capacity() {
        let t = run(&[(A, 1, 10); MAX_DATAGRAMS + 1], 65_536);
        assert_eq!(t[0].2.count, MAX_DATAGRAMS);
        assert_eq!(t[1].2.count, 1);
        let t = run(&[(A, 1, 100); 5], 250);
        assert_eq!(
            t.iter().map(|x| x.2.count).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        // A datagram larger than the whole buffer has no slot at all.
        assert_eq!(SmallBatch::default().slot(A, 1, 300, 250), None);
    }
}
