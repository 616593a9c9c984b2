//! Connected clients, for SHOW CLIENTS, SHOW SERVERS and the metrics. Each
//! client registers once at login; its state is a few atomics the session
//! updates at transaction boundaries, so the hot path takes no lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use pgrouter_parser::SessionState;

/// What a client is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    Idle = 0,
    /// Holds a server.
    Active = 1,
    /// Waiting for a server.
    Waiting = 2,
}

pub struct ClientInfo {
    pub id: u64,
    pub user: String,
    /// The user its pools belong to (the `connect_as` user for JWT logins).
    pub pools_user: String,
    pub database: String,
    pub addr: String,
    pub auth: &'static str,
    pub connect_time: SystemTime,
    pub read_only: bool,
    pub role: Option<String>,
    pub tls: bool,
    pub application_name: String,
    /// The worker thread its session runs on (0 without worker threads);
    /// changes when the session moves (`client/moving.rs`).
    pub worker: AtomicUsize,
    state: AtomicU8,
    /// Why the client is pinned to its server connection: the bits of a
    /// [`SessionState`] (see `pinning.rs`); 0 when it is not.
    pinned: AtomicU8,
    /// The server held now: (host:port, backend pid, TLS).
    server: super::current_server::CurrentServer,
    /// The shard of the server held now. With the client's `pools_user`
    /// and `database` and the server's address it names the one pool the
    /// connection came from: the address alone is shared by the pools of
    /// every user (and of every shard kept on that server).
    server_shard: AtomicUsize,
    /// Since when the client has been held by admin PAUSE, if it is: such a
    /// client waits for its database, not yet for one pool, so SHOW POOLS
    /// counts it on the database's first primary pool (as `cl_waiting`).
    paused_since: Mutex<Option<Instant>>,
}

impl ClientInfo {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        user: String,
        pools_user: String,
        database: String,
        addr: String,
        auth: &'static str,
        read_only: bool,
        role: Option<String>,
        tls: bool,
        application_name: String,
    ) -> ClientInfo {
        ClientInfo {
            id,
            user,
            pools_user,
            database,
            addr,
            auth,
            connect_time: SystemTime::now(),
            read_only,
            role,
            tls,
            application_name,
            worker: AtomicUsize::new(crate::worker::index()),
            state: AtomicU8::new(ClientState::Idle as u8),
            pinned: AtomicU8::new(0),
            server: Default::default(),
            server_shard: AtomicUsize::new(0),
            paused_since: Mutex::new(None),
        }
    }

    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            _ => ClientState::Idle,
        }
    }

    pub fn set_state(&self, state: ClientState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn set_pinned(&self, held: SessionState) {
        self.pinned.store(held.bits(), Ordering::Relaxed);
    }

    /// The session state that pins the client (empty when not pinned).
    pub fn pinned(&self) -> SessionState {
        SessionState::from_bits(self.pinned.load(Ordering::Relaxed))
    }

    /// The client now uses the backend `pid` at `addr`, a connection of
    /// its pool for `shard`.
    pub fn set_server(&self, addr: &Arc<str>, pid: i32, tls: bool, shard: usize) {
        // Before the server: a reader that sees the new server sees its shard.
        self.server_shard.store(shard, Ordering::Release);
        self.server.set(addr, pid, 0, tls);
    }

    /// The client has no server now.
    pub fn clear_server(&self) {
        self.server.clear();
    }

    /// The server held now: (host:port, backend pid).
    pub fn server(&self) -> Option<(String, i32)> {
        self.server.get().map(|s| (s.addr.to_string(), s.pid))
    }

    /// The backend pid of the server held now, if it is a connection of the
    /// pool of (`user`, `database`, `shard`, `addr`): each connection shows
    /// in its own pool only, not in every pool of the same address.
    pub fn server_of_pool(
        &self,
        user: &str,
        database: &str,
        shard: usize,
        addr: &str,
    ) -> Option<i32> {
        if self.pools_user != user || self.database != database {
            return None;
        }
        let seen = self.server.get()?;
        (&*seen.addr == addr && self.server_shard.load(Ordering::Acquire) == shard)
            .then_some(seen.pid)
    }

    /// Marks the client as held by admin PAUSE (or no longer held).
    pub fn set_paused(&self, paused: bool) {
        let mut since = self.paused_since.lock();
        match (paused, since.is_some()) {
            (true, false) => *since = Some(Instant::now()),
            (false, true) => *since = None,
            _ => {}
        }
    }

    /// How long the client has been held by admin PAUSE, if it is.
    pub fn paused_for(&self) -> Option<Duration> {
        self.paused_since.lock().map(|t| t.elapsed())
    }

    /// Whether the server held now is reached over TLS.
    pub fn server_tls(&self) -> bool {
        self.server.get().is_some_and(|s| s.tls)
    }
}

#[derive(Default)]
pub struct ClientRegistry {
    clients: Mutex<HashMap<u64, Arc<ClientInfo>>>,
}

/// A registration; dropping it removes the client.
pub struct Registered {
    pub info: Arc<ClientInfo>,
    registry: Arc<ClientRegistry>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.clients.lock().remove(&self.info.id);
    }
}

impl ClientRegistry {
    pub fn register(self: &Arc<Self>, info: ClientInfo) -> Registered {
        let info = Arc::new(info);
        self.clients.lock().insert(info.id, info.clone());
        Registered {
            info,
            registry: self.clone(),
        }
    }

    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self.clients.lock().values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }
}
