//! The eBPF programs weft loads, written as instructions: the XDP program that steers the overlay's inbound
//! UDP into AF_XDP sockets, and the tun steering program of `--cpu-local`.
//!
//! It is small enough to write by hand, so building weft needs no LLVM and no BPF object: for each frame it
//! checks Ethernet type IPv4, a 20-byte IPv4 header, protocol UDP, no fragmentation, destination address
//! ours and destination port the overlay's — or, on a dual-stack network, Ethernet type IPv6, version 6,
//! next header UDP (no extension headers, so no fragments), destination address our IPv6 one and the
//! overlay's port; such frames go to `bpf_redirect_map(xsks, rx_queue_index, XDP_PASS)` (which passes the
//! frame to the kernel when no socket serves that queue), everything else passes untouched. Multi-byte
//! loads read memory in the host's byte order, so each constant is built from its wire bytes with
//! `from_ne_bytes`. Every jump goes forward, to a label placed by `Asm`.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{ethernet, ipv4, ipv6, udp};

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst register in the low nibble, src register in the high nibble.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// XDP verdicts.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;
/// The helper `bpf_redirect_map`.
pub const HELPER_REDIRECT_MAP: i32 = 51;
/// `src_reg` of a 64-bit immediate load that the kernel replaces by the map with that fd.
pub const PSEUDO_MAP_FD: u8 = 1;

// Opcodes (class | size/op | mode/source).
const LDX_W: u8 = 0x61;
const LDX_H: u8 = 0x69;
const LDX_B: u8 = 0x71;
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const MOV32_K: u8 = 0xb4;
const ADD64_K: u8 = 0x07;
const AND64_K: u8 = 0x57;
const JA: u8 = 0x05;
const JGT_X: u8 = 0x2d;
const JNE_K: u8 = 0x55;
const JNE_X: u8 = 0x5d;
const LD_DW_IMM: u8 = 0x18;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

/// Offsets in `struct xdp_md`.
const MD_DATA: i16 = 0;
const MD_DATA_END: i16 = 4;
const MD_RX_QUEUE: i16 = 16;

/// Ethernet + IPv4 (no options) + UDP.
pub const OUTER_HEADERS: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN;
/// Ethernet + IPv6 (no extension headers) + UDP.
pub const OUTER_HEADERS6: usize = ethernet::HEADER_LEN + ipv6::HEADER_LEN + udp::HEADER_LEN;

/// Frame offsets of the fields the program loads.
const AT_ETHERTYPE: i16 = ethernet::field::ETHERTYPE.start as i16;
const IP: usize = ethernet::HEADER_LEN;
const AT_VER_IHL: i16 = (IP + ipv4::field::VER_IHL) as i16;
const AT_PROTOCOL: i16 = (IP + ipv4::field::PROTOCOL) as i16;
const AT_FLG_OFF: i16 = (IP + ipv4::field::FLG_OFF.start) as i16;
const AT_DST_ADDR: i16 = (IP + ipv4::field::DST_ADDR.start) as i16;
const AT_DST_PORT: i16 = (IP + ipv4::HEADER_LEN + udp::field::DST_PORT.start) as i16;
const AT6_VERSION: i16 = (IP + ipv6::field::VER_TC_FLOW.start) as i16;
const AT6_NEXT_HEADER: i16 = (IP + ipv6::field::NEXT_HEADER) as i16;
const AT6_DST_ADDR: i16 = (IP + ipv6::field::DST_ADDR.start) as i16;
const AT6_DST_PORT: i16 = (IP + ipv6::HEADER_LEN + udp::field::DST_PORT.start) as i16;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// Where the redirect program's jumps go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    /// The IPv6 checks.
    Ipv6,
    /// `bpf_redirect_map` on the frame's receive queue.
    Redirect,
    /// Hand the frame to the kernel (the last two instructions).
    Pass,
}

/// Instructions with forward jumps to labels, resolved by `finish`.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    jumps: Vec<(usize, Label)>,
    labels: Vec<(Label, usize)>,
}

impl Asm {
    fn op(&mut self, i: Insn) {
        self.insns.push(i);
    }

    /// A conditional (or, with `JA`, unconditional) jump to `to`.
    fn jump(&mut self, i: Insn, to: Label) {
        self.jumps.push((self.insns.len(), to));
        self.insns.push(i);
    }

    fn label(&mut self, l: Label) {
        self.labels.push((l, self.insns.len()));
    }

    fn finish(mut self) -> Vec<Insn> {
        for (at, to) in self.jumps {
            let (_, target) = self
                .labels
                .iter()
                .find(|(l, _)| *l == to)
                .expect("every jump target is placed");
            assert!(*target > at, "jumps only go forward");
            self.insns[at].off = (target - at - 1) as i16;
        }
        self.insns
    }
}

/// The program for overlay frames to `ip`:`port` and, on a dual-stack network, `[ip6]:port`, redirecting
/// into the XSKMAP with file descriptor `map_fd`.
///
/// IPv6 frames qualify when the UDP header directly follows the fixed header (next header 17: no extension
/// headers, and so no fragment header) and the destination address is `ip6`; ICMPv6 (neighbour discovery
/// included) and everything else pass.
///
/// A qualifying frame longer than `max_frame` (what an XDP socket's frame holds) passes to the kernel's UDP
/// socket: in generic mode a UDP GSO train from a peer on the same veth arrives as one frame of up to 64 KB,
/// which no XDP socket could take (it would be dropped).
pub fn redirect_program(
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
    port: u16,
    map_fd: i32,
    max_frame: usize,
) -> Vec<Insn> {
    let ethertype = u16::from_ne_bytes(ethernet::ETHERTYPE_IPV4.to_be_bytes());
    // Flags/fragment-offset word: the MF bit and the 13 offset bits must be zero (DF may be set).
    let frag_mask = u16::from_ne_bytes([0x3f, 0xff]);
    let ip_word = u32::from_ne_bytes(ip.octets());
    let port_word = u16::from_ne_bytes(port.to_be_bytes());
    let not_ipv4 = if ip6.is_some() {
        Label::Ipv6
    } else {
        Label::Pass
    };
    let mut a = Asm::default();
    a.op(insn(MOV64_X, 6, 1, 0, 0)); // r6 = ctx
    a.op(insn(LDX_W, 2, 1, MD_DATA, 0)); // r2 = data
    a.op(insn(LDX_W, 3, 1, MD_DATA_END, 0)); // r3 = data_end
    a.op(insn(MOV64_X, 4, 2, 0, 0)); // r4 = data
    a.op(insn(ADD64_K, 4, 0, 0, OUTER_HEADERS as i32)); // r4 += 42
    a.jump(insn(JGT_X, 4, 3, 0, 0), Label::Pass); // if r4 > data_end goto pass
    a.op(insn(LDX_H, 5, 2, AT_ETHERTYPE, 0)); // r5 = ethertype (kept for the IPv6 branch)
    a.jump(insn(JNE_K, 5, 0, 0, i32::from(ethertype)), not_ipv4);
    a.op(insn(LDX_B, 7, 2, AT_VER_IHL, 0)); // version and header length
    a.jump(insn(JNE_K, 7, 0, 0, 0x45), Label::Pass);
    a.op(insn(LDX_B, 7, 2, AT_PROTOCOL, 0)); // protocol
    a.jump(
        insn(JNE_K, 7, 0, 0, i32::from(ipv4::PROTO_UDP)),
        Label::Pass,
    );
    a.op(insn(LDX_H, 7, 2, AT_FLG_OFF, 0)); // flags and fragment offset
    a.op(insn(AND64_K, 7, 0, 0, i32::from(frag_mask)));
    a.jump(insn(JNE_K, 7, 0, 0, 0), Label::Pass);
    a.op(insn(LDX_W, 7, 2, AT_DST_ADDR, 0)); // destination address
    a.op(insn(MOV32_K, 4, 0, 0, ip_word as i32));
    a.jump(insn(JNE_X, 7, 4, 0, 0), Label::Pass);
    a.op(insn(LDX_H, 7, 2, AT_DST_PORT, 0)); // UDP destination port
    a.op(insn(MOV32_K, 4, 0, 0, i32::from(port_word)));
    a.jump(insn(JNE_X, 7, 4, 0, 0), Label::Pass);
    if let Some(ip6) = ip6 {
        a.jump(insn(JA, 0, 0, 0, 0), Label::Redirect);
        a.label(Label::Ipv6);
        let ethertype6 = u16::from_ne_bytes(ethernet::ETHERTYPE_IPV6.to_be_bytes());
        a.jump(insn(JNE_K, 5, 0, 0, i32::from(ethertype6)), Label::Pass);
        a.op(insn(MOV64_X, 4, 2, 0, 0)); // r4 = data
        a.op(insn(ADD64_K, 4, 0, 0, OUTER_HEADERS6 as i32)); // r4 += 62
        a.jump(insn(JGT_X, 4, 3, 0, 0), Label::Pass); // if r4 > data_end goto pass
        a.op(insn(LDX_B, 7, 2, AT6_VERSION, 0)); // version and the top of the traffic class
        a.op(insn(AND64_K, 7, 0, 0, 0xf0));
        a.jump(insn(JNE_K, 7, 0, 0, 0x60), Label::Pass);
        a.op(insn(LDX_B, 7, 2, AT6_NEXT_HEADER, 0)); // next header: UDP, nothing between
        a.jump(
            insn(JNE_K, 7, 0, 0, i32::from(ipv4::PROTO_UDP)),
            Label::Pass,
        );
        for (k, word) in ip6.octets().chunks_exact(4).enumerate() {
            let word = u32::from_ne_bytes(word.try_into().expect("four bytes"));
            a.op(insn(LDX_W, 7, 2, AT6_DST_ADDR + 4 * k as i16, 0)); // destination address, word k
            a.op(insn(MOV32_K, 4, 0, 0, word as i32));
            a.jump(insn(JNE_X, 7, 4, 0, 0), Label::Pass);
        }
        a.op(insn(LDX_H, 7, 2, AT6_DST_PORT, 0)); // UDP destination port
        a.op(insn(MOV32_K, 4, 0, 0, i32::from(port_word)));
        a.jump(insn(JNE_X, 7, 4, 0, 0), Label::Pass);
    }
    a.label(Label::Redirect);
    a.op(insn(MOV64_X, 4, 2, 0, 0)); // r4 = data
    a.op(insn(ADD64_K, 4, 0, 0, max_frame as i32)); // r4 += max_frame
    a.jump(insn(JGT_X, 3, 4, 0, 0), Label::Pass); // if data_end > r4 goto pass (too long)
    a.op(insn(LDX_W, 2, 6, MD_RX_QUEUE, 0)); // r2 = rx_queue_index
    a.op(insn(LD_DW_IMM, 1, PSEUDO_MAP_FD, 0, map_fd)); // r1 = &xsks
    a.op(insn(0, 0, 0, 0, 0));
    a.op(insn(MOV64_K, 3, 0, 0, XDP_PASS as i32)); // r3 = flags: pass when no socket serves the queue
    a.op(insn(CALL, 0, 0, 0, HELPER_REDIRECT_MAP));
    a.op(insn(EXIT, 0, 0, 0, 0));
    a.label(Label::Pass);
    a.op(insn(MOV64_K, 0, 0, 0, XDP_PASS as i32));
    a.op(insn(EXIT, 0, 0, 0, 0));
    a.finish()
}

/// The helper `bpf_get_smp_processor_id`.
pub const HELPER_SMP_PROCESSOR_ID: i32 = 8;

/// A socket-filter program returning the current CPU: as a tun steering program, it puts each packet on
/// the queue (and so the worker) of the CPU that sends it.
pub fn cpu_program() -> Vec<Insn> {
    vec![
        insn(CALL, 0, 0, 0, HELPER_SMP_PROCESSOR_ID),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// The instructions as the bytes `BPF_PROG_LOAD` reads.
pub fn to_bytes(prog: &[Insn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for i in prog {
        out.push(i.code);
        out.push(i.regs);
        out.extend_from_slice(&i.off.to_ne_bytes());
        out.extend_from_slice(&i.imm.to_ne_bytes());
    }
    out
}

/// What running the program on a frame decided (a test interpreter for exactly the opcodes above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Redirected into the map at this key (the receive queue).
    Redirect(u32),
    Other(u32),
}

/// Interprets `prog` on `frame` received on `rx_queue`, with the map lookup succeeding. For tests.
///
/// As the kernel's verifier, it accepts a load from the frame only within the bytes that a bounds check
/// (`data + n > data_end`, not taken) has proved on the path so far, and panics otherwise.
pub fn interpret(prog: &[Insn], frame: &[u8], rx_queue: u32) -> Verdict {
    const CTX: u64 = 1 << 40;
    const DATA: u64 = 2 << 40;
    let data_end = DATA + frame.len() as u64;
    let mut r = [0u64; 11];
    r[1] = CTX;
    // Bytes from the start of the frame that a passed bounds check covers.
    let mut proven = 0u64;
    let load = |addr: u64, size: usize, proven: u64| -> u64 {
        if addr == CTX + MD_DATA as u64 {
            return DATA;
        }
        if addr == CTX + MD_DATA_END as u64 {
            return DATA + frame.len() as u64;
        }
        if addr == CTX + MD_RX_QUEUE as u64 {
            return u64::from(rx_queue);
        }
        let off = (addr - DATA) as usize;
        assert!(
            (off + size) as u64 <= proven,
            "a load of {size} bytes at {off} beyond the {proven} bytes a bounds check proved"
        );
        let b = &frame[off..off + size];
        let mut w = [0u8; 8];
        w[..size].copy_from_slice(b);
        u64::from_ne_bytes(w)
    };
    let mut pc = 0;
    loop {
        let i = prog[pc];
        let (dst, src) = (usize::from(i.regs & 0x0f), usize::from(i.regs >> 4));
        let imm = i64::from(i.imm) as u64;
        pc += 1;
        let jump = |cond: bool, pc: &mut usize| {
            if cond {
                *pc = (*pc as i64 + i64::from(i.off)) as usize;
            }
        };
        match i.code {
            LDX_W => r[dst] = load(r[src].wrapping_add(i.off as u64), 4, proven),
            LDX_H => r[dst] = load(r[src].wrapping_add(i.off as u64), 2, proven),
            LDX_B => r[dst] = load(r[src].wrapping_add(i.off as u64), 1, proven),
            MOV64_X => r[dst] = r[src],
            MOV64_K => r[dst] = imm,
            MOV32_K => r[dst] = u64::from(i.imm as u32),
            ADD64_K => r[dst] = r[dst].wrapping_add(imm),
            AND64_K => r[dst] &= imm,
            JGT_X => {
                let taken = r[dst] > r[src];
                if !taken && r[src] == data_end && r[dst] >= DATA {
                    proven = proven.max(r[dst] - DATA);
                }
                jump(taken, &mut pc)
            }
            JNE_K => jump(r[dst] != imm, &mut pc),
            JNE_X => jump(r[dst] != r[src], &mut pc),
            JA => jump(true, &mut pc),
            LD_DW_IMM => {
                r[dst] = u64::from(i.imm as u32);
                pc += 1;
            }
            CALL => {
                assert_eq!(i.imm, HELPER_REDIRECT_MAP);
                return Verdict::Redirect(r[2] as u32);
            }
            EXIT => {
                return match r[0] as u32 {
                    XDP_PASS => Verdict::Pass,
                    v => Verdict::Other(v),
                }
            }
            c => panic!("opcode {c:#x} not interpreted"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::MacAddr;
    use crate::wire::outer::{OuterPath6, OUTER_LEN6};

    const OURS: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
    const OURS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 1);
    /// What an XDP socket's frame holds (`xsk::MAX_FRAME`).
    const MAX: usize = 3840;

    /// The program without and with an IPv6 address: IPv4 frames fare the same under both.
    fn programs(ip: Ipv4Addr, port: u16) -> [Vec<Insn>; 2] {
        [
            redirect_program(ip, None, port, 7, MAX),
            redirect_program(ip, Some(OURS6), port, 7, MAX),
        ]
    }

    fn frame(dst: Ipv4Addr, port: u16, proto: u8, frag: [u8; 2]) -> Vec<u8> {
        let mut f = vec![0u8; OUTER_HEADERS + 30];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[20..22].copy_from_slice(&frag);
        f[23] = proto;
        f[30..34].copy_from_slice(&dst.octets());
        f[36..38].copy_from_slice(&port.to_be_bytes());
        f
    }

    /// An IPv6 frame to `dst`:`port` with `next` as the next header after the fixed header, its bytes
    /// written by offset (independently of the program's constants).
    fn frame6(dst: Ipv6Addr, port: u16, next: u8) -> Vec<u8> {
        let mut f = vec![0u8; OUTER_HEADERS6 + 30];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14] = 0x60;
        f[18..20].copy_from_slice(&38u16.to_be_bytes());
        f[20] = next;
        f[21] = 64;
        f[22..38].copy_from_slice(&Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 2).octets());
        f[38..54].copy_from_slice(&dst.octets());
        f[54..56].copy_from_slice(&50000u16.to_be_bytes());
        f[56..58].copy_from_slice(&port.to_be_bytes());
        f
    }

    #[test]
    fn overlay_udp_to_us_is_redirected_to_its_queue() {
        for p in programs(OURS, 8472) {
            let f = frame(OURS, 8472, 17, [0x40, 0]); // DF set is fine
            assert_eq!(interpret(&p, &f, 3), Verdict::Redirect(3));
        }
    }

    #[test]
    fn everything_else_passes() {
        for p in programs(OURS, 8472) {
            let other = Ipv4Addr::new(10, 250, 0, 2);
            for f in [
                frame(other, 8472, 17, [0, 0]),
                frame(OURS, 8473, 17, [0, 0]),
                frame(OURS, 8472, 6, [0, 0]),
                frame(OURS, 8472, 17, [0x20, 0]), // more fragments
                frame(OURS, 8472, 17, [0, 1]),    // a later fragment
                frame(OURS, 8472, 17, [0, 0])[..41].to_vec(),
            ] {
                assert_eq!(interpret(&p, &f, 0), Verdict::Pass);
            }
            let mut arp = frame(OURS, 8472, 17, [0, 0]);
            arp[12..14].copy_from_slice(&[0x08, 0x06]);
            assert_eq!(interpret(&p, &arp, 0), Verdict::Pass);
            let mut options = frame(OURS, 8472, 17, [0, 0]);
            options[14] = 0x46;
            assert_eq!(interpret(&p, &options, 0), Verdict::Pass);
        }
    }

    #[test]
    fn high_addresses_and_ports_compare_unsigned() {
        let ip = Ipv4Addr::new(250, 255, 1, 200);
        for p in programs(ip, 65000) {
            assert_eq!(
                interpret(&p, &frame(ip, 65000, 17, [0, 0]), 1),
                Verdict::Redirect(1)
            );
            assert_eq!(
                interpret(&p, &frame(ip, 8472, 17, [0, 0]), 1),
                Verdict::Pass
            );
        }
        let ip6 = Ipv6Addr::new(0xffff, 0xfffe, 0x8000, 0, 0xffff, 0xff00, 0x80, 0xffff);
        let p = redirect_program(OURS, Some(ip6), 65000, 7, MAX);
        assert_eq!(
            interpret(&p, &frame6(ip6, 65000, 17), 1),
            Verdict::Redirect(1)
        );
    }

    #[test]
    fn ipv6_overlay_udp_to_us_is_redirected_to_its_queue() {
        let p = redirect_program(OURS, Some(OURS6), 8472, 7, MAX);
        assert_eq!(
            interpret(&p, &frame6(OURS6, 8472, 17), 2),
            Verdict::Redirect(2)
        );
        // A frame as weft's own IPv6 path builds it.
        let path = OuterPath6 {
            src_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            src_ip: Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 2),
            dst_ip: OURS6,
            dst_port: 8472,
        };
        let payload = b"vxlan header and inner frame";
        let mut f = vec![0u8; OUTER_LEN6];
        path.write(&mut f, payload, 50000, 0xabcde);
        f.extend_from_slice(payload);
        assert_eq!(interpret(&p, &f, 0), Verdict::Redirect(0));
        // Exactly the headers, no payload, is still a whole UDP header.
        assert_eq!(interpret(&p, &f[..OUTER_HEADERS6], 1), Verdict::Redirect(1));
    }

    #[test]
    fn other_ipv6_traffic_passes() {
        let p = redirect_program(OURS, Some(OURS6), 8472, 7, MAX);
        let pass = |f: &[u8]| assert_eq!(interpret(&p, f, 0), Verdict::Pass, "{f:02x?}");
        // Another address, differing in each of the four words the program compares.
        for word in 0..4 {
            let mut o = OURS6.octets();
            o[word * 4 + 3] ^= 0x10;
            pass(&frame6(Ipv6Addr::from(o), 8472, 17));
        }
        pass(&frame6(OURS6, 8473, 17));
        // Extension headers before UDP (hop-by-hop, routing, fragment, destination options), and TCP.
        for next in [
            ipv6::EXT_HOP_BY_HOP,
            ipv6::EXT_ROUTING,
            ipv6::EXT_FRAGMENT,
            ipv6::EXT_DEST_OPTS,
            6,
        ] {
            pass(&frame6(OURS6, 8472, next));
        }
        // ICMPv6: a neighbour solicitation for our address (the multicast group's frame and ours).
        let mut ns = frame6(OURS6, 0, ipv6::PROTO_ICMPV6);
        ns[54] = 135;
        pass(&ns);
        let mut solicited = ns.clone();
        solicited[38..54]
            .copy_from_slice(&Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1).octets());
        pass(&solicited);
        // Not version 6 behind the IPv6 Ethernet type.
        let mut v4_inside = frame6(OURS6, 8472, 17);
        v4_inside[14] = 0x45;
        pass(&v4_inside);
        // Truncated anywhere before the end of the UDP header.
        let f = frame6(OURS6, 8472, 17);
        for n in 0..OUTER_HEADERS6 {
            pass(&f[..n]);
        }
        // Without an IPv6 address the program passes IPv6 as before.
        let v4_only = redirect_program(OURS, None, 8472, 7, MAX);
        assert_eq!(interpret(&v4_only, &f, 0), Verdict::Pass);
    }

    #[test]
    fn an_ipv6_frame_to_our_ipv4_words_is_not_taken_for_ipv4() {
        // The IPv4 address and port at the IPv4 offsets of an IPv6 frame: the Ethernet type decides.
        let p = redirect_program(OURS, Some(OURS6), 8472, 7, MAX);
        let mut f = frame6(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 9), 9, 17);
        f[14] = 0x45;
        f[23] = 17;
        f[30..34].copy_from_slice(&OURS.octets());
        f[36..38].copy_from_slice(&8472u16.to_be_bytes());
        assert_eq!(interpret(&p, &f, 0), Verdict::Pass);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[20..22].copy_from_slice(&[0, 0]);
        assert_eq!(interpret(&p, &f, 0), Verdict::Redirect(0));
    }

    #[test]
    #[should_panic(expected = "beyond the 42 bytes a bounds check proved")]
    fn the_interpreter_refuses_loads_beyond_the_proven_bounds() {
        // The IPv6 branch without its own 62-byte check reads the address on the strength of the 42 bytes
        // proved for IPv4: the verifier would refuse it, and so does the interpreter, whatever the length.
        let mut p = redirect_program(OURS, Some(OURS6), 8472, 7, MAX);
        let at = p
            .iter()
            .position(|i| i.code == ADD64_K && i.imm == OUTER_HEADERS6 as i32)
            .unwrap();
        p[at].imm = 0;
        interpret(&p, &frame6(OURS6, 8472, 17), 0);
    }

    #[test]
    fn field_offsets_are_the_wire_offsets() {
        assert_eq!((OUTER_HEADERS, OUTER_HEADERS6), (42, 62));
        assert_eq!(
            [
                AT_ETHERTYPE,
                AT_VER_IHL,
                AT_PROTOCOL,
                AT_FLG_OFF,
                AT_DST_ADDR,
                AT_DST_PORT
            ],
            [12, 14, 23, 20, 30, 36]
        );
        assert_eq!(
            [AT6_VERSION, AT6_NEXT_HEADER, AT6_DST_ADDR, AT6_DST_PORT],
            [14, 20, 38, 56]
        );
    }

    #[test]
    fn jumps_go_forward_and_pass_is_the_last_two_instructions() {
        for p in programs(OURS, 8472) {
            let pass = p.len() - 2;
            assert_eq!(p[pass], insn(MOV64_K, 0, 0, 0, XDP_PASS as i32));
            assert_eq!(p[pass + 1].code, EXIT);
            // The redirect starts with the three-instruction length check before reading the queue.
            let redirect = p
                .iter()
                .position(|i| i.code == LDX_W && i.off == MD_RX_QUEUE)
                .unwrap()
                - 3;
            for (i, ins) in p.iter().enumerate() {
                if matches!(ins.code, JA | JGT_X | JNE_K | JNE_X) {
                    assert!(ins.off >= 0, "forward only");
                    let to = i + 1 + ins.off as usize;
                    assert!(to <= pass, "inside the program");
                    if ins.code == JA {
                        assert_eq!(to, redirect);
                    }
                }
            }
            assert_eq!(to_bytes(&p).len(), p.len() * 8);
        }
    }

    #[test]
    fn frames_longer_than_a_socket_frame_go_to_the_kernel() {
        for p in programs(OURS, 8472) {
            let mut f = frame(OURS, 8472, ipv4::PROTO_UDP, [0, 0]);
            f.resize(MAX, 0);
            assert_eq!(
                interpret(&p, &f, 1),
                Verdict::Redirect(1),
                "a full frame fits"
            );
            f.push(0);
            assert_eq!(
                interpret(&p, &f, 1),
                Verdict::Pass,
                "one byte more does not"
            );
            f.resize(65_000, 0);
            assert_eq!(interpret(&p, &f, 1), Verdict::Pass, "a GSO train");
        }
    }
}
