//! Which server backend a client is using right now, for the two readers
//! that ask from another task: a CancelRequest (`cancel.rs`) and the admin
//! console's SHOW CLIENTS (`registry.rs`).
//!
//! Why not a mutex: the session changes it twice per transaction (at
//! checkout and at release, in transaction mode), and the readers are rare.
//! A mutex and an `Arc` clone cost four atomic read-modify-writes each
//! time; here the usual change is two plain stores. The address is replaced
//! (under a lock) only when it differs from the last one, which for most
//! clients is never: their transactions land on the same server address.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

#[derive(Default)]
pub struct CurrentServer {
    /// The backend's pid (high half) and cancel secret (low half); 0 while
    /// the client has no server. A pid is never 0.
    key: AtomicU64,
    tls: AtomicBool,
    /// The address of the last server the client used.
    addr: Mutex<Option<Arc<str>>>,
    /// Where `addr`'s text is, to see without the lock that it is the same
    /// (the `Arc` kept in `addr` keeps that memory from being reused).
    addr_ptr: AtomicUsize,
}

/// A consistent reading of [`CurrentServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSeen {
    pub addr: Arc<str>,
    pub pid: i32,
    pub secret: i32,
    pub tls: bool,
}

impl CurrentServer {
    /// The client now uses backend `pid` at `addr`. One writer: the session.
    pub fn set(&self, addr: &Arc<str>, pid: i32, secret: i32, tls: bool) {
        let ptr = Arc::as_ptr(addr) as *const u8 as usize;
        if self.addr_ptr.load(Ordering::Relaxed) != ptr {
            // No key while the address changes: a reader that saw the old
            // key sees it gone when it looks again, and reads again.
            self.key.store(0, Ordering::Release);
            *self.addr.lock() = Some(addr.clone());
            self.addr_ptr.store(ptr, Ordering::Relaxed);
        }
        self.tls.store(tls, Ordering::Relaxed);
        self.key.store(pack(pid, secret), Ordering::Release);
    }

    /// The client has no server now. Sequentially consistent: a cancel
    /// registered after it sees the server gone, or the check-in after it
    /// sees the cancel (see `cancel_in_flight.rs`).
    pub fn clear(&self) {
        self.key.store(0, Ordering::SeqCst);
    }

    /// The server in use, if any. The key is read before and after the
    /// rest: equal readings mean nothing changed in between.
    pub fn get(&self) -> Option<ServerSeen> {
        loop {
            let key = self.key.load(Ordering::Acquire);
            if key == 0 {
                return None;
            }
            let addr = self.addr.lock().clone()?;
            let tls = self.tls.load(Ordering::Relaxed);
            if self.key.load(Ordering::Acquire) == key {
                let (pid, secret) = unpack(key);
                return Some(ServerSeen {
                    addr,
                    pid,
                    secret,
                    tls,
                });
            }
        }
    }
}

fn pack(pid: i32, secret: i32) -> u64 {
    (u64::from(pid as u32) << 32) | u64::from(secret as u32)
}

fn unpack(key: u64) -> (i32, i32) {
    ((key >> 32) as u32 as i32, key as u32 as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_and_change_of_address() {
        let c = CurrentServer::default();
        assert_eq!(c.get(), None);
        let a: Arc<str> = "10.0.0.1:5432".into();
        let b: Arc<str> = "10.0.0.2:5432".into();
        c.set(&a, 7, -3, false);
        assert_eq!(
            c.get(),
            Some(ServerSeen {
                addr: a.clone(),
                pid: 7,
                secret: -3,
                tls: false
            })
        );
        c.clear();
        assert_eq!(c.get(), None);
        c.set(&b, i32::MAX, i32::MIN, true);
        let seen = c.get().unwrap();
        assert_eq!(
            (&*seen.addr, seen.pid, seen.secret, seen.tls),
            ("10.0.0.2:5432", i32::MAX, i32::MIN, true)
        );
        c.set(&a, 9, 0, false);
        assert_eq!(c.get().map(|s| (s.addr, s.pid, s.secret)), Some((a, 9, 0)));
    }

    #[test]
    fn readers_never_see_a_key_with_another_servers_address() {
        let c = Arc::new(CurrentServer::default());
        let addrs: Vec<Arc<str>> = vec!["a:1".into(), "b:2".into()];
        let writer = {
            let (c, addrs) = (c.clone(), addrs.clone());
            std::thread::spawn(move || {
                for i in 0..200_000 {
                    let k = i % 2;
                    // The pid tells which address it belongs with.
                    c.set(&addrs[k], k as i32 + 1, 0, false);
                    if i % 3 == 0 {
                        c.clear();
                    }
                }
            })
        };
        for _ in 0..200_000 {
            if let Some(s) = c.get() {
                assert_eq!(&*s.addr, &*addrs[s.pid as usize - 1]);
            }
        }
        writer.join().unwrap();
    }
}
