//! One AF_XDP socket: its UMEM (frames shared with the kernel), the fill/completion/RX/TX rings, and the
//! frame bookkeeping; frames are received and sent whole (Ethernet included) without the UDP stack.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes per UMEM frame: one page, the size every driver and copy mode accept.
pub const FRAME_SIZE: usize = 4096;
/// Room the kernel keeps in front of received data in each frame (XDP_PACKET_HEADROOM).
const KERNEL_HEADROOM: usize = 256;
/// The largest frame a UMEM frame holds.
pub const MAX_FRAME: usize = FRAME_SIZE - KERNEL_HEADROOM;
/// Frames for receiving (kept in the fill ring) and as many again for sending.
const RX_FRAMES: u32 = 2048;
const TX_FRAMES: u32 = 2048;
/// Entries per ring (a power of two, at least the frames that may sit in it).
const RING: u32 = 2048;

/// A memory-mapped ring shared with the kernel: producer and consumer indices and the entries.
struct Ring {
    map: NonNull<libc::c_void>,
    map_len: usize,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut u8,
    mask: u32,
    /// Our view of the index we advance (producer for fill/TX, consumer for RX/completion).
    local: u32,
    /// The last value read of the index the kernel advances.
    cached: u32,
}

impl Ring {
    fn map(fd: RawFd, off: &libc::xdp_ring_offset, pgoff: i64, entry: usize) -> io::Result<Ring> {
        let map_len = off.desc as usize + RING as usize * entry;
        // SAFETY: maps a ring the kernel created for this socket, at the page offset and with the length
        // its XDP_MMAP_OFFSETS reported; the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = p.cast::<u8>();
        // SAFETY: the offsets lie within the mapping just made (the kernel reported them for it).
        let (producer, consumer, flags, descs) = unsafe {
            (
                base.add(off.producer as usize).cast::<AtomicU32>(),
                base.add(off.consumer as usize).cast::<AtomicU32>(),
                base.add(off.flags as usize).cast::<AtomicU32>(),
                base.add(off.desc as usize),
            )
        };
        Ok(Ring {
            map: NonNull::new(p).expect("mmap returned a non-null mapping"),
            map_len,
            producer,
            consumer,
            flags,
            descs,
            mask: RING - 1,
            local: 0,
            cached: 0,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into our live mapping, aligned by the kernel, and only accessed atomically.
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { &*self.consumer }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// For rings we produce into: free entries.
    fn free(&mut self) -> u32 {
        let free = RING - self.local.wrapping_sub(self.cached);
        if free > 0 {
            return free;
        }
        self.cached = self.consumer().load(Ordering::Acquire);
        RING - self.local.wrapping_sub(self.cached)
    }

    /// For rings we consume from: entries ready.
    fn ready(&mut self) -> u32 {
        let n = self.cached.wrapping_sub(self.local);
        if n > 0 {
            return n;
        }
        self.cached = self.producer().load(Ordering::Acquire);
        self.cached.wrapping_sub(self.local)
    }

    fn slot<T>(&self, idx: u32) -> *mut T {
        // SAFETY: masked indices stay within the ring's RING entries of size_of::<T>() bytes.
        unsafe { self.descs.cast::<T>().add((idx & self.mask) as usize) }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `Ring::map`; nothing refers to it afterwards.
        unsafe { libc::munmap(self.map.as_ptr(), self.map_len) };
    }
}

/// An AF_XDP socket bound to one queue of one interface.
pub struct Xsk {
    // Rings are declared before the socket so they are unmapped before it closes.
    fill: Ring,
    comp: Ring,
    rx: Ring,
    tx: Ring,
    fd: OwnedFd,
    umem: NonNull<u8>,
    umem_len: usize,
    free_tx: Vec<u64>,
    /// TX descriptors written but not yet published to the kernel.
    tx_pending: u32,
    pub zero_copy: bool,
}

// SAFETY: the raw pointers refer to mappings owned by this value alone; moving it to another thread
// moves that ownership with it, and it is never shared.
unsafe impl Send for Xsk {}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a live value of the size passed, read by the kernel during the call only.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads a socket option into a plain C struct of integers (for which all-zero bytes are a valid value).
fn getsockopt<T: Copy>(fd: RawFd, opt: libc::c_int) -> io::Result<T> {
    // SAFETY: only used with the kernel's xdp_mmap_offsets and xdp_options, integer-only structs.
    let mut v: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `v`, which is live and that large.
    let rc =
        unsafe { libc::getsockopt(fd, libc::SOL_XDP, opt, (&mut v as *mut T).cast(), &mut len) };
    if rc == 0 {
        Ok(v)
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Xsk {
    /// Creates a socket with its own UMEM, bound to `queue` of interface `ifindex`: zero-copy where the
    /// driver offers it, copy mode otherwise.
    pub fn open(ifindex: u32, queue: u32) -> io::Result<Xsk> {
        // SAFETY: plain socket(2) call; the result is checked and owned below.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem_len = (RX_FRAMES + TX_FRAMES) as usize * FRAME_SIZE;
        // SAFETY: an anonymous private mapping; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                umem_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let umem = NonNull::new(p.cast::<u8>()).expect("mmap returned a non-null mapping");
        let unmap = |e: io::Error| {
            // SAFETY: unmaps the UMEM mapped above, which nothing else refers to yet.
            unsafe { libc::munmap(p, umem_len) };
            e
        };
        let s = fd.as_raw_fd();
        let reg = libc::xdp_umem_reg {
            addr: p as u64,
            len: umem_len as u64,
            chunk_size: FRAME_SIZE as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(s, libc::XDP_UMEM_REG, &reg).map_err(unmap)?;
        for opt in [
            libc::XDP_UMEM_FILL_RING,
            libc::XDP_UMEM_COMPLETION_RING,
            libc::XDP_RX_RING,
            libc::XDP_TX_RING,
        ] {
            setsockopt(s, opt, &RING).map_err(unmap)?;
        }
        let off: libc::xdp_mmap_offsets = getsockopt(s, libc::XDP_MMAP_OFFSETS).map_err(unmap)?;
        let desc = std::mem::size_of::<libc::xdp_desc>();
        let rings = (|| {
            Ok::<_, io::Error>((
                Ring::map(s, &off.fr, libc::XDP_UMEM_PGOFF_FILL_RING as i64, 8)?,
                Ring::map(s, &off.cr, libc::XDP_UMEM_PGOFF_COMPLETION_RING as i64, 8)?,
                Ring::map(s, &off.rx, libc::XDP_PGOFF_RX_RING, desc)?,
                Ring::map(s, &off.tx, libc::XDP_PGOFF_TX_RING, desc)?,
            ))
        })();
        let (fill, comp, rx, tx) = rings.map_err(unmap)?;
        let mut xsk = Xsk {
            fill,
            comp,
            rx,
            tx,
            fd,
            umem,
            umem_len,
            free_tx: (RX_FRAMES..RX_FRAMES + TX_FRAMES)
                .map(|i| u64::from(i) * FRAME_SIZE as u64)
                .collect(),
            tx_pending: 0,
            zero_copy: false,
        };
        // The kernel's own frames: every receive frame starts in the fill ring.
        for i in 0..RX_FRAMES {
            // SAFETY: slot() stays within the fill ring; u64 entries hold frame addresses.
            unsafe {
                xsk.fill
                    .slot::<u64>(i)
                    .write(u64::from(i) * FRAME_SIZE as u64)
            };
        }
        xsk.fill.local = RX_FRAMES;
        xsk.fill.producer().store(RX_FRAMES, Ordering::Release);
        xsk.bind(ifindex, queue)?;
        let opts: libc::xdp_options = getsockopt(s, libc::XDP_OPTIONS)?;
        xsk.zero_copy = opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0;
        Ok(xsk)
    }

    fn bind(&self, ifindex: u32, queue: u32) -> io::Result<()> {
        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_USE_NEED_WAKEUP,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `addr` is a live sockaddr_xdp of the size passed.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn frame(&mut self, addr: u64, len: usize) -> &mut [u8] {
        let start = addr as usize;
        assert!(start + len <= self.umem_len, "frame outside the UMEM");
        // SAFETY: the range lies within the UMEM (checked above), and the frame is ours while we hold its
        // descriptor (taken from the RX ring or our free list, not yet given back to the kernel).
        unsafe { std::slice::from_raw_parts_mut(self.umem.as_ptr().add(start), len) }
    }

    /// Hands up to `max` received frames to `f`, then returns their buffers to the kernel. Returns how
    /// many were received.
    pub fn recv(&mut self, max: u32, mut f: impl FnMut(&mut [u8])) -> u32 {
        let n = self.rx.ready().min(max);
        if n == 0 {
            return 0;
        }
        for i in 0..n {
            let idx = self.rx.local.wrapping_add(i);
            // SAFETY: entries between our consumer index and the kernel's producer index are published.
            let d = unsafe { self.rx.slot::<libc::xdp_desc>(idx).read() };
            let len = (d.len as usize).min(MAX_FRAME);
            f(self.frame(d.addr, len));
            // SAFETY: within the fill ring, which has room for every receive frame; the frame's base
            // address returns to the kernel.
            unsafe {
                self.fill
                    .slot::<u64>(self.fill.local)
                    .write(d.addr & !(FRAME_SIZE as u64 - 1))
            };
            self.fill.local = self.fill.local.wrapping_add(1);
        }
        self.rx.local = self.rx.local.wrapping_add(n);
        self.rx.consumer().store(self.rx.local, Ordering::Release);
        self.fill
            .producer()
            .store(self.fill.local, Ordering::Release);
        if self.fill.needs_wakeup() {
            // SAFETY: recvfrom with no buffer only wakes the driver to refill; errors are irrelevant.
            unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
        n
    }

    /// Takes back frames the kernel has finished sending.
    fn reap(&mut self) {
        let n = self.comp.ready();
        for i in 0..n {
            // SAFETY: published completion entries hold frame addresses we gave to the TX ring.
            let addr = unsafe {
                self.comp
                    .slot::<u64>(self.comp.local.wrapping_add(i))
                    .read()
            };
            self.free_tx.push(addr & !(FRAME_SIZE as u64 - 1));
        }
        if n > 0 {
            self.comp.local = self.comp.local.wrapping_add(n);
            self.comp
                .consumer()
                .store(self.comp.local, Ordering::Release);
        }
    }

    /// Builds one frame with `build` (given the whole frame buffer, returning the length used) and queues
    /// it for sending. False if no frame or TX slot is free (the caller counts the drop).
    pub fn queue(&mut self, build: impl FnOnce(&mut [u8]) -> usize) -> bool {
        if self.free_tx.is_empty() {
            self.reap();
            if self.free_tx.is_empty() {
                self.flush();
                self.reap();
            }
        }
        if self.tx.free() <= self.tx_pending {
            self.flush();
            if self.tx.free() <= self.tx_pending {
                return false;
            }
        }
        let Some(addr) = self.free_tx.pop() else {
            return false;
        };
        let len = build(self.frame(addr, MAX_FRAME)).min(MAX_FRAME);
        let idx = self.tx.local.wrapping_add(self.tx_pending);
        // SAFETY: within the TX ring, at a free slot (checked above).
        unsafe {
            self.tx.slot::<libc::xdp_desc>(idx).write(libc::xdp_desc {
                addr,
                len: len as u32,
                options: 0,
            })
        };
        self.tx_pending += 1;
        true
    }

    /// Publishes queued frames and makes the kernel send them.
    pub fn flush(&mut self) {
        if self.tx_pending > 0 {
            self.tx.local = self.tx.local.wrapping_add(self.tx_pending);
            self.tx_pending = 0;
            self.tx.producer().store(self.tx.local, Ordering::Release);
        }
        if self.zero_copy {
            // The driver sends on its own; it only needs a kick when it asked for one.
            if self.tx.consumer().load(Ordering::Acquire) != self.tx.local && self.tx.needs_wakeup()
            {
                let _ = self.kick();
            }
        } else {
            // In copy mode each sendto sends a bounded batch; go on until the kernel has taken everything.
            for _ in 0..256 {
                if self.tx.consumer().load(Ordering::Acquire) == self.tx.local {
                    break;
                }
                match self.kick().map_err(|e| e.raw_os_error()) {
                    Ok(()) | Err(Some(libc::EAGAIN | libc::EINTR)) => {}
                    Err(Some(libc::EBUSY | libc::ENOBUFS)) => self.reap(),
                    Err(_) => break,
                }
            }
        }
        self.reap();
    }
}

impl Xsk {
    /// Asks the kernel to process the TX ring.
    fn kick(&self) -> io::Result<()> {
        // SAFETY: sendto with no buffer and no address only makes the kernel look at the TX ring.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl AsFd for Xsk {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Xsk {
    fn drop(&mut self) {
        // SAFETY: unmaps the UMEM mapped in `open`; the rings (unmapped with their fields) and the socket
        // are the only other users and are gone once this value is.
        unsafe { libc::munmap(self.umem.as_ptr().cast(), self.umem_len) };
    }
}
