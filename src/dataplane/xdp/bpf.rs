//! The few bpf(2) commands weft needs: create an XSKMAP, store sockets in it, load the redirect program,
//! and read a loaded program's name (to recognise a stale one of our own).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::wire::xdp_filter::{to_bytes, Insn};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// The name weft's program carries (at most 15 bytes), by which a later start recognises it.
pub const PROGRAM_NAME: &str = "weft_xsk";

/// Runs bpf(cmd, attr) with `attr` a `#[repr(C)]` value laid out as the kernel's `union bpf_attr` member.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` points to a live, initialised value of the size passed; the kernel reads (and for
    // some commands writes) at most that many bytes of it and keeps no reference after returning.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this new file descriptor to us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let n = name.len().min(15);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// Creates an XSKMAP with one slot per receive queue.
pub fn create_xskmap(entries: u32) -> io::Result<OwnedFd> {
    let mut a = MapCreate {
        map_type: BPF_MAP_TYPE_XSKMAP,
        key_size: 4,
        value_size: 4,
        max_entries: entries.max(1),
        map_name: name16("weft_xsks"),
        ..Default::default()
    };
    bpf(BPF_MAP_CREATE, &mut a).map(owned)
}

#[repr(C)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Stores AF_XDP socket `xsk` at `queue` in the XSKMAP `map`.
pub fn set_xsk(map: RawFd, queue: u32, xsk: RawFd) -> io::Result<()> {
    let key = queue;
    let value = xsk as u32;
    let mut a = MapUpdate {
        map_fd: map as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads an XDP program; on rejection the error carries the verifier's log.
pub fn load_xdp(prog: &[Insn]) -> io::Result<OwnedFd> {
    load(BPF_PROG_TYPE_XDP, PROGRAM_NAME, prog)
}

/// Loads an XDP program under another name (tests use it to stand for somebody else's program).
pub fn load_xdp_named(name: &str, prog: &[Insn]) -> io::Result<OwnedFd> {
    load(BPF_PROG_TYPE_XDP, name, prog)
}

/// Loads a socket-filter program (as tun steering programs are).
pub fn load_socket_filter(name: &str, prog: &[Insn]) -> io::Result<OwnedFd> {
    load(BPF_PROG_TYPE_SOCKET_FILTER, name, prog)
}

fn load(prog_type: u32, name: &str, prog: &[Insn]) -> io::Result<OwnedFd> {
    let insns = to_bytes(prog);
    let license = b"Dual MIT/GPL\0";
    let mut log = vec![0u8; 64 * 1024];
    let mut a = ProgLoad {
        prog_type,
        insn_cnt: prog.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name16(name),
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut a) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let last = text.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
            Err(io::Error::new(
                e.kind(),
                format!("{e}; verifier: {}", last.trim()),
            ))
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct GetFdById {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The id and name of the program behind `fd` (from `struct bpf_prog_info`: id at byte 4, name at 64).
pub fn prog_id_and_name(fd: RawFd) -> io::Result<(u32, String)> {
    let mut info = [0u8; 96];
    let mut a = InfoByFd {
        bpf_fd: fd as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    let id = u32::from_ne_bytes([info[4], info[5], info[6], info[7]]);
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(16);
    Ok((id, String::from_utf8_lossy(&name[..end]).into_owned()))
}

/// The name of the loaded program with kernel id `id`.
pub fn prog_name_by_id(id: u32) -> io::Result<String> {
    let mut a = GetFdById {
        id,
        ..Default::default()
    };
    let fd = owned(bpf(BPF_PROG_GET_FD_BY_ID, &mut a)?);
    use std::os::fd::AsRawFd;
    prog_id_and_name(fd.as_raw_fd()).map(|(_, n)| n)
}
