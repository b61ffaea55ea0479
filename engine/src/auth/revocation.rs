//! Logged-out sessions. A session (one login, and the refreshes that follow it) is remembered
//! until every token it could have issued has expired, in a bounded list kept in
//! `<data_dir>/revoked-sessions.json` so that a restart does not bring it back. The file is
//! this node's: with several nodes a logout revokes on the node that answered it only.
//!
//! When the list is full, the logout that overflows it revokes every token issued before it
//! (a "not before" time, as ThingsBoard outdates a user's tokens when their credentials change)
//! and the list starts again: the bound never un-revokes a session, it only ends more of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use actors::metrics::AUTH_REVOKED_SESSIONS;
use anyhow::Context;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What the file holds. Times are Unix seconds, as in the tokens' `iat` and `exp`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Saved {
    /// Tokens issued before this are revoked, whatever their session.
    not_before: i64,
    sessions: Vec<Revoked>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Revoked {
    session: Uuid,
    /// When the logout happened: no token of the session was issued later.
    revoked_at: i64,
    /// When the last token the session may have issued expires.
    until: i64,
}

#[derive(Debug, Default)]
struct State {
    not_before: i64,
    sessions: HashMap<Uuid, Revoked>,
}

pub struct Revocations {
    path: PathBuf,
    capacity: usize,
    state: Mutex<State>,
}

impl Revocations {
    /// Loads the list from `path` (none yet: empty), dropping what has expired by `now`.
    pub fn open(path: &Path, capacity: usize, now: i64) -> anyhow::Result<Revocations> {
        let saved: Saved = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is damaged; deleting it brings back every logged-out session",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let sessions = saved
            .sessions
            .into_iter()
            .filter(|r| r.until > now)
            .map(|r| (r.session, r))
            .collect::<HashMap<_, _>>();
        metrics::gauge!(AUTH_REVOKED_SESSIONS).set(sessions.len() as f64);
        Ok(Revocations {
            path: path.to_owned(),
            capacity: capacity.max(1),
            state: Mutex::new(State {
                not_before: saved.not_before,
                sessions,
            }),
        })
    }

    /// Whether a token of `session` issued at `issued_at` was revoked.
    pub fn is_revoked(&self, session: Uuid, issued_at: i64) -> bool {
        let state = self.state.lock();
        issued_at < state.not_before || state.sessions.contains_key(&session)
    }

    /// Revokes `session` until `until` and saves the list. Blocking file I/O: call it where
    /// blocking is allowed.
    pub fn revoke(&self, session: Uuid, until: i64, now: i64) -> anyhow::Result<()> {
        let mut state = self.state.lock();
        state.sessions.retain(|_, r| r.until > now);
        if state.sessions.len() >= self.capacity && !state.sessions.contains_key(&session) {
            // Every listed session logged out by now, so its tokens were issued by now: a
            // "not before" of now covers them, except tokens issued within this very second,
            // whose sessions stay listed.
            state.not_before = state.not_before.max(now);
            state.sessions.retain(|_, r| r.revoked_at >= now);
            if state.sessions.len() >= self.capacity {
                state.not_before = now.saturating_add(1);
                state.sessions.clear();
            }
        }
        state.sessions.insert(
            session,
            Revoked {
                session,
                revoked_at: now,
                until,
            },
        );
        metrics::gauge!(AUTH_REVOKED_SESSIONS).set(state.sessions.len() as f64);
        let saved = Saved {
            not_before: state.not_before,
            sessions: state.sessions.values().copied().collect(),
        };
        // Written while holding the lock, so that files land in the order of the logouts.
        write_atomically(&self.path, &serde_json::to_vec(&saved)?)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`: a crash leaves
/// the old list or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_sessions_stay_revoked_until_they_expire_and_across_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("revoked-sessions.json");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let list = Revocations::open(&path, 10, 1_000).expect("open");
        list.revoke(a, 2_000, 1_000).expect("revoke");
        assert!(list.is_revoked(a, 900));
        assert!(!list.is_revoked(b, 900));
        let reopened = Revocations::open(&path, 10, 1_500).expect("reopen");
        assert!(reopened.is_revoked(a, 900));
        // Once every token of the session has expired, the entry is dropped.
        let later = Revocations::open(&path, 10, 2_000).expect("reopen");
        assert!(!later.is_revoked(a, 900));
    }

    #[test]
    fn a_full_list_revokes_everything_issued_before_instead_of_forgetting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("revoked-sessions.json");
        let list = Revocations::open(&path, 2, 0).expect("open");
        let sessions: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        list.revoke(sessions[0], 10_000, 100).expect("revoke");
        list.revoke(sessions[1], 10_000, 200).expect("revoke");
        list.revoke(sessions[2], 10_000, 300).expect("revoke");
        for (session, issued) in [(sessions[0], 50), (sessions[1], 150), (sessions[2], 250)] {
            assert!(list.is_revoked(session, issued), "{session}");
        }
        assert!(
            list.is_revoked(Uuid::new_v4(), 299),
            "issued before the overflow"
        );
        assert!(!list.is_revoked(Uuid::new_v4(), 300), "issued after it");
        assert!(list.state.lock().sessions.len() <= 2);
    }

    #[test]
    fn a_damaged_file_stops_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("revoked-sessions.json");
        std::fs::write(&path, b"{not json").expect("write");
        let err = Revocations::open(&path, 10, 0).err().expect("refused");
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
