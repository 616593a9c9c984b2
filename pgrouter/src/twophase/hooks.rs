//! Test hooks: pauses at the two moments a crash matters most, so an
//! integration test can SIGKILL the router there. Read from the environment
//! once per runtime; unset (the normal case) they cost one branch.
//!
//! - `PGROUTER_TEST_2PC_PAUSE_MS`: after the `commit` record is durable,
//!   before the first COMMIT PREPARED (recovery must then COMMIT).
//! - `PGROUTER_TEST_2PC_PAUSE_BEFORE_RECORD_MS`: after every PREPARE, before
//!   the record (recovery must then ROLL BACK).

use std::time::Duration;

/// Never pause longer than this, whatever the variable says.
const MAX_PAUSE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, Default)]
pub struct TestHooks {
    before_commit_prepared: Option<Duration>,
    before_record: Option<Duration>,
}

impl TestHooks {
    pub fn from_env() -> TestHooks {
        TestHooks {
            before_commit_prepared: read("PGROUTER_TEST_2PC_PAUSE_MS"),
            before_record: read("PGROUTER_TEST_2PC_PAUSE_BEFORE_RECORD_MS"),
        }
    }

    pub async fn pause_before_commit_prepared(&self) {
        if let Some(d) = self.before_commit_prepared {
            tracing::warn!(
                ms = d.as_millis() as u64,
                "test hook: pausing before COMMIT PREPARED"
            );
            crate::timer::sleep(d).await;
        }
    }

    pub async fn pause_before_record(&self) {
        if let Some(d) = self.before_record {
            tracing::warn!(
                ms = d.as_millis() as u64,
                "test hook: pausing before the decision record"
            );
            crate::timer::sleep(d).await;
        }
    }
}

fn read(name: &str) -> Option<Duration> {
    let ms: u64 = std::env::var(name).ok()?.trim().parse().ok()?;
    (ms > 0).then(|| Duration::from_millis(ms).min(MAX_PAUSE))
}
