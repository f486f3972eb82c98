//! CPU-local steering: each worker pinned to one CPU, and packets steered to the worker of the CPU they
//! are handled on (tun queue by a steering eBPF program, UDP socket by a reuseport classic-BPF program),
//! so that handing a packet to a worker never wakes another CPU.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use crate::dataplane::xdp::bpf;
use crate::wire::xdp_filter::cpu_program;

/// setsockopt(SOL_SOCKET) option that attaches a classic BPF program choosing a reuseport group member.
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: usize) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// Attaches the CPU steering program to the multi-queue tun through one of its queue fds.
pub fn steer_tun_by_cpu(tun_fd: RawFd) -> io::Result<()> {
    let prog = bpf::load_socket_filter("weft_tun_cpu", &cpu_program())?;
    let fd: libc::c_int = prog.as_raw_fd();
    // SAFETY: TUNSETSTEERINGEBPF reads one c_int (the program fd) from the pointer; the tun keeps its own
    // reference to the program, so ours may close afterwards.
    let rc = unsafe { libc::ioctl(tun_fd, libc::TUNSETSTEERINGEBPF, &fd as *const libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the SO_REUSEPORT group of `sock` pick the socket at the index of the receiving CPU.
pub fn steer_reuseport_by_cpu(sock: RawFd) -> io::Result<()> {
    // A = the current CPU (ancillary load); return A.
    let mut code = [
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_A) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: the kernel copies the program from `prog` (which points at `code`, alive for the call).
    let rc = unsafe {
        libc::setsockopt(
            sock,
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
