//! The eBPF programs weft loads, written as instructions: the XDP program that steers the overlay's inbound
//! UDP into AF_XDP sockets, and the tun steering program of `--cpu-local`.
//!
//! It is small enough to write by hand, so building weft needs no LLVM and no BPF object: for each frame it
//! checks Ethernet type IPv4, a 20-byte IPv4 header, protocol UDP, no fragmentation, destination address
//! ours and destination port the overlay's; such frames go to `bpf_redirect_map(xsks, rx_queue_index,
//! XDP_PASS)` (which passes the frame to the kernel when no socket serves that queue), everything else
//! passes untouched. Multi-byte loads read memory in the host's byte order, so each constant is built from
//! its wire bytes with `from_ne_bytes`.

use std::net::Ipv4Addr;

use super::{ethernet, ipv4, udp};

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

/// Frame offsets of the fields the program loads.
const AT_ETHERTYPE: i16 = ethernet::field::ETHERTYPE.start as i16;
const IP: usize = ethernet::HEADER_LEN;
const AT_VER_IHL: i16 = (IP + ipv4::field::VER_IHL) as i16;
const AT_PROTOCOL: i16 = (IP + ipv4::field::PROTOCOL) as i16;
const AT_FLG_OFF: i16 = (IP + ipv4::field::FLG_OFF.start) as i16;
const AT_DST_ADDR: i16 = (IP + ipv4::field::DST_ADDR.start) as i16;
const AT_DST_PORT: i16 = (IP + ipv4::HEADER_LEN + udp::field::DST_PORT.start) as i16;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// The program for frames to `ip`:`port`, redirecting into the XSKMAP with file descriptor `map_fd`.
pub fn redirect_program(ip: Ipv4Addr, port: u16, map_fd: i32) -> Vec<Insn> {
    let ethertype = u16::from_ne_bytes([0x08, 0x00]);
    // Flags/fragment-offset word: the MF bit and the 13 offset bits must be zero (DF may be set).
    let frag_mask = u16::from_ne_bytes([0x3f, 0xff]);
    let ip_word = u32::from_ne_bytes(ip.octets());
    let port_word = u16::from_ne_bytes(port.to_be_bytes());
    // Instructions up to and including each "goto pass" are counted so the jump offsets are exact: the
    // `pass` label is the last two instructions.
    let mut p = vec![
        insn(MOV64_X, 6, 1, 0, 0),                    // r6 = ctx
        insn(LDX_W, 2, 1, MD_DATA, 0),                // r2 = data
        insn(LDX_W, 3, 1, MD_DATA_END, 0),            // r3 = data_end
        insn(MOV64_X, 4, 2, 0, 0),                    // r4 = data
        insn(ADD64_K, 4, 0, 0, OUTER_HEADERS as i32), // r4 += 42
        insn(JGT_X, 4, 3, 0, 0),                      // if r4 > data_end goto pass
        insn(LDX_H, 5, 2, AT_ETHERTYPE, 0),           // r5 = ethertype
        insn(JNE_K, 5, 0, 0, i32::from(ethertype)),
        insn(LDX_B, 5, 2, AT_VER_IHL, 0), // version and header length
        insn(JNE_K, 5, 0, 0, 0x45),
        insn(LDX_B, 5, 2, AT_PROTOCOL, 0), // protocol
        insn(JNE_K, 5, 0, 0, 17),
        insn(LDX_H, 5, 2, AT_FLG_OFF, 0), // flags and fragment offset
        insn(AND64_K, 5, 0, 0, i32::from(frag_mask)),
        insn(JNE_K, 5, 0, 0, 0),
        insn(LDX_W, 5, 2, AT_DST_ADDR, 0), // destination address
        insn(MOV32_K, 4, 0, 0, ip_word as i32),
        insn(JNE_X, 5, 4, 0, 0),
        insn(LDX_H, 5, 2, AT_DST_PORT, 0), // UDP destination port
        insn(MOV32_K, 4, 0, 0, i32::from(port_word)),
        insn(JNE_X, 5, 4, 0, 0),
        insn(LDX_W, 2, 6, MD_RX_QUEUE, 0), // r2 = rx_queue_index
        insn(LD_DW_IMM, 1, PSEUDO_MAP_FD, 0, map_fd), // r1 = &xsks
        insn(0, 0, 0, 0, 0),
        insn(MOV64_K, 3, 0, 0, XDP_PASS as i32), // r3 = flags: pass when no socket serves the queue
        insn(CALL, 0, 0, 0, HELPER_REDIRECT_MAP),
        insn(EXIT, 0, 0, 0, 0),
        insn(MOV64_K, 0, 0, 0, XDP_PASS as i32), // pass:
        insn(EXIT, 0, 0, 0, 0),
    ];
    let pass = p.len() - 2;
    for (i, ins) in p.iter_mut().enumerate() {
        if matches!(ins.code, JGT_X | JNE_K | JNE_X) {
            ins.off = (pass - i - 1) as i16;
        }
    }
    p
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
pub fn interpret(prog: &[Insn], frame: &[u8], rx_queue: u32) -> Verdict {
    const CTX: u64 = 1 << 40;
    const DATA: u64 = 2 << 40;
    let mut r = [0u64; 11];
    r[1] = CTX;
    let load = |addr: u64, size: usize| -> u64 {
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
            LDX_W => r[dst] = load(r[src].wrapping_add(i.off as u64), 4),
            LDX_H => r[dst] = load(r[src].wrapping_add(i.off as u64), 2),
            LDX_B => r[dst] = load(r[src].wrapping_add(i.off as u64), 1),
            MOV64_X => r[dst] = r[src],
            MOV64_K => r[dst] = imm,
            MOV32_K => r[dst] = u64::from(i.imm as u32),
            ADD64_K => r[dst] = r[dst].wrapping_add(imm),
            AND64_K => r[dst] &= imm,
            JGT_X => jump(r[dst] > r[src], &mut pc),
            JNE_K => jump(r[dst] != imm, &mut pc),
            JNE_X => jump(r[dst] != r[src], &mut pc),
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

    const OURS: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);

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

    #[test]
    fn overlay_udp_to_us_is_redirected_to_its_queue() {
        let p = redirect_program(OURS, 8472, 7);
        let f = frame(OURS, 8472, 17, [0x40, 0]); // DF set is fine
        assert_eq!(interpret(&p, &f, 3), Verdict::Redirect(3));
    }

    #[test]
    fn everything_else_passes() {
        let p = redirect_program(OURS, 8472, 7);
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

    #[test]
    fn high_addresses_and_ports_compare_unsigned() {
        let ip = Ipv4Addr::new(250, 255, 1, 200);
        let p = redirect_program(ip, 65000, 7);
        assert_eq!(
            interpret(&p, &frame(ip, 65000, 17, [0, 0]), 1),
            Verdict::Redirect(1)
        );
        assert_eq!(
            interpret(&p, &frame(ip, 8472, 17, [0, 0]), 1),
            Verdict::Pass
        );
    }

    #[test]
    fn field_offsets_are_the_wire_offsets() {
        assert_eq!(OUTER_HEADERS, 42);
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
    }

    #[test]
    fn jumps_land_on_the_pass_label() {
        let p = redirect_program(OURS, 8472, 7);
        let pass = p.len() - 2;
        for (i, ins) in p.iter().enumerate() {
            if matches!(ins.code, JGT_X | JNE_K | JNE_X) {
                assert_eq!(i + 1 + ins.off as usize, pass);
            }
        }
        assert_eq!(to_bytes(&p).len(), p.len() * 8);
    }
}
