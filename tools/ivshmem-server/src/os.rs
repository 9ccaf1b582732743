//! The OS interface: the shared-memory file (memfd, sealed), eventfds, messages with
//! `SCM_RIGHTS`, waiting with `poll`, and a shared mapping of the region. Everything goes
//! through `rustix`'s safe wrappers except `mmap`/`munmap` and the accesses through the mapping.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::{Errno, Error};

/// Creates the shared region: an anonymous memory file of `size` bytes (zero-filled), sealed
/// so that nobody who receives it can grow or shrink it.
pub fn create_shm(name: &str, size: u64) -> Result<OwnedFd, Error> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, size)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// Size in bytes of the file behind `fd`.
pub fn file_size(fd: BorrowedFd<'_>) -> Result<u64, Error> {
    let st = rustix::fs::fstat(fd)?;
    u64::try_from(st.st_size).map_err(|_| Error::Protocol("negative file size"))
}

/// A non-blocking, close-on-exec eventfd (what QEMU's own server hands out).
pub fn create_eventfd() -> Result<OwnedFd, Error> {
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
    )?)
}

/// Adds 1 to an eventfd (rings the interrupt it stands for).
pub fn notify(fd: BorrowedFd<'_>) -> Result<(), Error> {
    let n = rustix::io::write(fd, &1u64.to_ne_bytes())?;
    if n == 8 {
        Ok(())
    } else {
        Err(Error::Os(Errno::IO))
    }
}

/// Reads and clears a non-blocking eventfd's counter; 0 if nothing was pending.
pub fn drain(fd: BorrowedFd<'_>) -> Result<u64, Error> {
    let mut buf = [0u8; 8];
    match rustix::io::read(fd, &mut buf) {
        Ok(8) => Ok(u64::from_ne_bytes(buf)),
        Ok(_) => Err(Error::Os(Errno::IO)),
        Err(Errno::AGAIN) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Waits until `fd` is readable (or hung up), at most `timeout` (`None`: forever).
/// Returns whether it became ready.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<bool, Error> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let ts = left.map(|d| Timespec {
            tv_sec: d.as_secs() as _,
            tv_nsec: d.subsec_nanos() as _,
        });
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends one protocol message (8 bytes little-endian, optionally one descriptor) without
/// blocking and without `SIGPIPE`. A message that does not fit in the socket buffer whole is an
/// error (`AGAIN`): the caller drops that client.
pub fn send_msg(sock: BorrowedFd<'_>, value: i64, fd: Option<BorrowedFd<'_>>) -> Result<(), Errno> {
    let bytes = value.to_le_bytes();
    let iov = [IoSlice::new(&bytes)];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(Errno::NOBUFS);
        }
    }
    let n = rustix::net::sendmsg(
        sock,
        &iov,
        &mut control,
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    )?;
    if n == bytes.len() {
        Ok(())
    } else {
        // A partial message desynchronises the stream: treat as a failed client.
        Err(Errno::AGAIN)
    }
}

/// Receives one protocol message: `Ok(None)` at end of stream. Blocks until the whole 8 bytes
/// arrived (use [`wait_readable`] first for a timeout). A descriptor arrives with the first
/// bytes of its message; more than one descriptor per message is a protocol error.
pub fn recv_msg(sock: BorrowedFd<'_>) -> Result<Option<(i64, Option<OwnedFd>)>, Error> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    let mut fd: Option<OwnedFd> = None;
    while got < buf.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        let r = match rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(r) => r,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut extra = false;
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                for f in fds {
                    if fd.is_none() {
                        fd = Some(f);
                    } else {
                        extra = true;
                    }
                }
            }
        }
        if extra || r.flags.contains(ReturnFlags::CTRUNC) {
            return Err(Error::Protocol("more than one descriptor with a message"));
        }
        if r.bytes == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(Error::Protocol("stream ended inside a message"))
            };
        }
        got += r.bytes;
    }
    Ok(Some((i64::from_le_bytes(buf), fd)))
}

/// The shared region mapped read-write (`MAP_SHARED`) into this process. Accesses are
/// bounds-checked volatile copies: the peer writes the same memory concurrently, so no Rust
/// reference into it is ever made.
#[derive(Debug)]
pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is process-wide memory owned by this value; all accesses are volatile
// reads/writes of bytes through a raw pointer (no references), valid from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above: concurrent volatile byte accesses are what shared memory is for.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the whole file behind `fd`.
    pub fn new(fd: BorrowedFd<'_>) -> Result<Mapping, Error> {
        let len = usize::try_from(file_size(fd)?).map_err(|_| Error::Protocol("region too big"))?;
        if len == 0 {
            return Err(Error::Protocol("empty region"));
        }
        // SAFETY: a fresh shared mapping at an address the kernel picks; it overlaps nothing of
        // ours. The file cannot shrink under it (the server seals the region), so every page
        // stays backed while the mapping lives.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        let base = NonNull::new(p.cast::<u8>()).ok_or(Error::Os(Errno::NOMEM))?;
        Ok(Mapping { base, len })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: `new` refuses empty files).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, off: usize, n: usize) {
        assert!(
            off.checked_add(n).is_some_and(|end| end <= self.len),
            "access outside the mapped region"
        );
    }

    /// Copies `dst.len()` bytes at `off` out of the region.
    pub fn read(&self, off: usize, dst: &mut [u8]) {
        self.check(off, dst.len());
        for (i, b) in dst.iter_mut().enumerate() {
            // SAFETY: in bounds (checked above); the mapping is valid while `self` lives.
            *b = unsafe { self.base.as_ptr().add(off + i).read_volatile() };
        }
    }

    /// Copies `src` into the region at `off`.
    pub fn write(&self, off: usize, src: &[u8]) {
        self.check(off, src.len());
        for (i, &b) in src.iter().enumerate() {
            // SAFETY: in bounds (checked above); the mapping is valid and writable.
            unsafe { self.base.as_ptr().add(off + i).write_volatile(b) };
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what `mmap` returned; no pointer into the mapping
        // outlives `self` (accessors copy in and out).
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn shm_is_sized_zeroed_and_sealed() {
        let fd = create_shm("test", 64 << 10).unwrap();
        assert_eq!(file_size(fd.as_fd()).unwrap(), 64 << 10);
        assert_eq!(rustix::fs::ftruncate(&fd, 4096), Err(Errno::PERM));
        assert_eq!(rustix::fs::ftruncate(&fd, 1 << 20), Err(Errno::PERM));
        let m = Mapping::new(fd.as_fd()).unwrap();
        let mut b = [0xffu8; 16];
        m.read((64 << 10) - 16, &mut b);
        assert_eq!(b, [0; 16]);
    }

    #[test]
    fn two_mappings_see_each_other() {
        let fd = create_shm("test", 4096).unwrap();
        let a = Mapping::new(fd.as_fd()).unwrap();
        let b = Mapping::new(fd.as_fd()).unwrap();
        a.write(100, b"hello");
        let mut got = [0u8; 5];
        b.read(100, &mut got);
        assert_eq!(&got, b"hello");
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn mapping_is_bounds_checked() {
        let fd = create_shm("test", 4096).unwrap();
        let m = Mapping::new(fd.as_fd()).unwrap();
        m.write(4093, b"abcd");
    }

    #[test]
    fn eventfd_counts() {
        let e = create_eventfd().unwrap();
        assert_eq!(drain(e.as_fd()).unwrap(), 0);
        assert!(!wait_readable(e.as_fd(), Some(Duration::from_millis(1))).unwrap());
        notify(e.as_fd()).unwrap();
        notify(e.as_fd()).unwrap();
        assert!(wait_readable(e.as_fd(), Some(Duration::ZERO)).unwrap());
        assert_eq!(drain(e.as_fd()).unwrap(), 2);
        assert_eq!(drain(e.as_fd()).unwrap(), 0);
    }

    #[test]
    fn messages_carry_numbers_and_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let e = create_eventfd().unwrap();
        send_msg(a.as_fd(), 0, None).unwrap();
        send_msg(a.as_fd(), -1, Some(e.as_fd())).unwrap();
        send_msg(a.as_fd(), 65535, None).unwrap();
        let (v, fd) = recv_msg(b.as_fd()).unwrap().unwrap();
        assert_eq!((v, fd.is_some()), (0, false));
        let (v, fd) = recv_msg(b.as_fd()).unwrap().unwrap();
        assert_eq!(v, -1);
        // The received descriptor is the same eventfd.
        notify(fd.unwrap().as_fd()).unwrap();
        assert_eq!(drain(e.as_fd()).unwrap(), 1);
        let (v, fd) = recv_msg(b.as_fd()).unwrap().unwrap();
        assert_eq!((v, fd.is_some()), (65535, false));
        drop(a);
        assert!(recv_msg(b.as_fd()).unwrap().is_none());
    }

    #[test]
    fn truncated_message_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        rustix::io::write(&a, &[1, 2, 3]).unwrap();
        drop(a);
        assert!(matches!(recv_msg(b.as_fd()), Err(Error::Protocol(_))));
    }

    #[test]
    fn send_to_closed_peer_fails_without_signal() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert!(send_msg(a.as_fd(), 1, None).is_err());
    }
}
