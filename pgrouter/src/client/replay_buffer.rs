//! The request kept for a replay on another server when a replica dies
//! before answering (see `recovery.rs`).

use bytes::BytesMut;

/// Requests bigger than this are not kept for a replay.
pub(super) const MAX_REPLAY_BYTES: usize = 1 << 20;

/// Client messages sent to a replica since checkout, kept until the first
/// answer reaches the client: whole frames back to back, in a buffer the
/// session reuses from one request to the next.
#[derive(Default)]
pub(super) struct Replay {
    frames: BytesMut,
}

impl Replay {
    /// Keeps a message; false when the request grew too big to keep.
    pub fn keep(&mut self, msg: &[u8]) -> bool {
        if self.frames.len() + msg.len() > MAX_REPLAY_BYTES {
            return false;
        }
        self.frames.extend_from_slice(msg);
        true
    }

    /// The kept messages as (tag, whole message).
    pub fn messages(&self) -> impl Iterator<Item = (u8, &[u8])> {
        let mut rest = &self.frames[..];
        std::iter::from_fn(move || {
            let frame = crate::protocol::next_frame(rest, usize::MAX).ok()??;
            let (msg, tail) = rest.split_at(frame.total_len);
            rest = tail;
            Some((frame.tag, msg))
        })
    }
}

impl Replay {
    /// An empty request kept in `frames` (a buffer reused between requests).
    pub fn in_buffer(frames: BytesMut) -> Replay {
        Replay { frames }
    }
}

/// [`Session::stop_replay`] for callers holding a borrow of another field.
/// Runs for every server message the client gets, nearly always with no
/// replay kept: looked at first, as `take` would write `None` back anyway.
#[inline]
pub(super) fn stop_replay(replay: &mut Option<Replay>, spare: &mut BytesMut) {
    if replay.is_none() {
        return;
    }
    if let Some(replay) = replay.take() {
        *spare = replay.frames;
    }
}
