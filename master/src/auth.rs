//! Users, sessions and enrollment tokens: argon2 password hashes, expiring bearer tokens,
//! failed logins throttled per (id, source address), logins in flight limited per source,
//! single-use expiring enrollment tokens.
//!
//! Secrets (passwords, tokens) are never logged and never stored: only their hashes are.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};

use crate::store::{EnrollmentTokenRecord, SessionRecord, Store, StoreError, UserRecord};

/// How long a login session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed logins allowed for one id from one source before that pair is throttled.
pub const FREE_FAILURES: u32 = 5;
/// Longest throttle of one (id, source) pair after repeated failures.
pub const MAX_THROTTLE: Duration = Duration::from_secs(15 * 60);
/// (id, source) pairs tracked for failed logins before the ones not throttled are forgotten.
const MAX_TRACKED_ATTEMPTERS: usize = 10_000;
/// Logins queued or running at once from one source address; more are refused at once.
pub const MAX_LOGINS_PER_SOURCE: usize = 4;
/// Shortest accepted password for new users.
pub const MIN_PASSWORD_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid id or password")]
    BadCredentials,
    #[error(
        "too many failed logins for {id:?} from {address} (more than {FREE_FAILURES}): retry in \
         {retry_in_secs} s"
    )]
    RateLimited {
        id: String,
        address: IpAddr,
        retry_in_secs: u64,
    },
    #[error(
        "too many logins from {address} (at most {MAX_LOGINS_PER_SOURCE} at once): retry in \
         {retry_in_secs} s"
    )]
    TooManyLogins { address: IpAddr, retry_in_secs: u64 },
    #[error("user {0:?} is disabled: ask an operator (`corpus-master users enable`)")]
    Disabled(String),
    #[error("user {0:?} does not exist: see `corpus-master users list`")]
    NoSuchUser(String),
    #[error("session token is missing, invalid or expired: log in again")]
    BadSession,
    #[error("password is too short: use at least {MIN_PASSWORD_LEN} characters")]
    WeakPassword,
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// sha256 hex of a secret: the key under which sessions and tokens are stored.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// 32 random bytes, hex: session and enrollment tokens.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A stand-in hash verified when the user does not exist, so an unknown id takes as long to
/// refuse as a wrong password (no user enumeration by timing).
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("corpus-decoy-password").unwrap_or_default())
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
}

/// Who tries: failed logins are counted per id *and* source address, so an attacker at one
/// address slows down only his own guesses, never the user's logins from elsewhere.
type Attempter = (String, IpAddr);

/// Which sessions `sessions revoke` ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionSelector {
    All,
    User(String),
    /// The short id `sessions list` shows.
    Id(String),
}

/// A session as the console lists it: its short id and record, never its token.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub id: String,
    pub record: SessionRecord,
}

/// Hex digits of a session's id: enough to tell sessions apart, useless to log in with
/// (it is a prefix of a hash of the token's hash).
const SESSION_ID_LEN: usize = 12;

/// The short id of the session stored under `token_hash`.
pub fn session_id(token_hash: &str) -> String {
    let mut id = secret_hash(token_hash);
    id.truncate(SESSION_ID_LEN);
    id
}

/// Logins and sessions.
pub struct Auth {
    store: Store,
    failures: Mutex<HashMap<Attempter, Failures>>,
    /// Logins queued or running per source address ([`MAX_LOGINS_PER_SOURCE`]).
    in_flight: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Bumped whenever sessions end before their time (revoke, logout, a user disabled,
    /// deleted or given a new password), so open client streams check theirs again.
    revocations: tokio::sync::watch::Sender<u64>,
}

/// A login's place among its source's logins in flight; given back on drop.
#[derive(Debug)]
pub struct LoginTicket {
    in_flight: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl Drop for LoginTicket {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = in_flight.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                in_flight.remove(&self.source);
            }
        }
    }
}

/// The key a login from `source` is counted under: the address, the /64 of an IPv6 one, the
/// unspecified address when unknown.
pub fn login_source(source: Option<IpAddr>) -> IpAddr {
    source.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), crate::accept::source_key)
}

impl Auth {
    pub fn new(store: Store) -> Self {
        Auth {
            store,
            failures: Mutex::new(HashMap::new()),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            revocations: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Changes each time sessions were ended early; a stream opened with a session checks it
    /// again then ([`Auth::session_ended`]).
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    /// Tells every open job stream to check its session and access again (a session ended, or
    /// a grant was revoked).
    pub fn sessions_ended(&self) {
        self.revocations.send_modify(|generation| *generation += 1);
    }

    /// Why the session of `token`, opened by `user`, no longer holds (revoked or logged out,
    /// expired, its user disabled or deleted), in words for the client; `None` while it does.
    pub fn session_ended(&self, token: &str, user: &str) -> Result<Option<String>, AuthError> {
        let session = self.store.session(&secret_hash(token))?;
        let account = self.store.user(user)?;
        Ok(match (session, account) {
            (_, None) => Some(format!("user {user:?} was deleted: this stream is closed")),
            (_, Some(account)) if account.disabled => {
                Some(format!("user {user:?} was disabled: this stream is closed"))
            }
            (None, _) => Some(
                "your session was revoked (or logged out): this stream is closed; log in again"
                    .to_owned(),
            ),
            (Some(s), _) if s.expires_at <= now_unix() => {
                Some("your session expired: this stream is closed; log in again".to_owned())
            }
            (Some(_), _) => None,
        })
    }

    pub fn add_user(&self, id: &str, password: &str, admin: bool) -> Result<UserRecord, AuthError> {
        if password.chars().count() < MIN_PASSWORD_LEN {
            return Err(AuthError::WeakPassword);
        }
        let user = UserRecord {
            id: id.to_owned(),
            password_hash: hash_password(password)?,
            admin,
            created_at: now_unix(),
            max_envs: None,
            disabled: false,
            max_storage_bytes: None,
        };
        if !self.store.create_user(&user)? {
            return Err(AuthError::UserExists(id.to_owned()));
        }
        Ok(user)
    }

    /// Admits a login from `source` to the queue for the password hash, or refuses it at once
    /// when the source already has [`MAX_LOGINS_PER_SOURCE`] in flight: a flood from one
    /// address never queues ahead of everyone else's logins. Call before waiting for a hash slot.
    pub fn admit_login(&self, source: IpAddr) -> Result<LoginTicket, AuthError> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let count = in_flight.entry(source).or_default();
        if *count >= MAX_LOGINS_PER_SOURCE {
            return Err(AuthError::TooManyLogins {
                address: source,
                retry_in_secs: 1,
            });
        }
        *count += 1;
        Ok(LoginTicket {
            in_flight: self.in_flight.clone(),
            source,
        })
    }

    /// Counts an attempt for `id` from `source` before its password is verified, refusing it
    /// while that pair is throttled. Counting first means concurrent guesses cannot all slip
    /// past the limit while their (slow) verifications run; a success clears the count.
    fn reserve_attempt(&self, id: &str, source: IpAddr) -> Result<(), AuthError> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if failures.len() > MAX_TRACKED_ATTEMPTERS {
            // Forget the pairs not throttled now: the map cannot grow without bound.
            failures.retain(|_, f| f.locked_until.is_some_and(|t| t > now));
        }
        let entry = failures.entry((id.to_owned(), source)).or_default();
        if let Some(until) = entry.locked_until
            && until > now
        {
            return Err(AuthError::RateLimited {
                id: id.to_owned(),
                address: source,
                retry_in_secs: (until - now).as_secs().max(1),
            });
        }
        entry.count += 1;
        if entry.count >= FREE_FAILURES {
            // 1 s, 2 s, 4 s, ... doubling with each attempt past the free ones.
            let exp = (entry.count - FREE_FAILURES).min(20);
            let lockout = Duration::from_secs(1u64 << exp).min(MAX_THROTTLE);
            entry.locked_until = Some(now + lockout);
        }
        Ok(())
    }

    fn clear_attempts(&self, id: &str, source: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(&(id.to_owned(), source));
    }

    /// Checks id/password from `source` and opens a session. Blocking (argon2): call from a
    /// blocking task, holding a [`LoginTicket`] and a hash slot.
    pub fn login(
        &self,
        id: &str,
        password: &str,
        source: IpAddr,
    ) -> Result<(String, i64), AuthError> {
        self.reserve_attempt(id, source)?;
        let user = self.store.user(id)?;
        let phc = user
            .as_ref()
            .map_or(decoy_hash(), |u| u.password_hash.as_str());
        let ok = verify_password(password, phc) && user.is_some();
        if !ok {
            return Err(AuthError::BadCredentials);
        }
        self.clear_attempts(id, source);
        // Said only to who knows the password: no enumeration of disabled ids.
        if user.as_ref().is_some_and(|u| u.disabled) {
            return Err(AuthError::Disabled(id.to_owned()));
        }
        let token = new_secret();
        let now = now_unix();
        let expires_at = now + SESSION_TTL.as_secs() as i64;
        self.store.put_session(
            &secret_hash(&token),
            &SessionRecord {
                user: id.to_owned(),
                expires_at,
                created_at: now,
                source: source.to_string(),
            },
        )?;
        Ok((token, expires_at))
    }

    /// The user a bearer token belongs to, if it is valid and unexpired and its user still
    /// exists and is enabled.
    pub fn session_user(&self, token: &str) -> Result<String, AuthError> {
        let hash = secret_hash(token);
        match self.store.session(&hash)? {
            Some(s) if s.expires_at > now_unix() => match self.store.user(&s.user)? {
                Some(user) if !user.disabled => Ok(s.user),
                _ => {
                    self.store.delete_session(&hash)?;
                    Err(AuthError::BadSession)
                }
            },
            Some(_) => {
                self.store.delete_session(&hash)?;
                Err(AuthError::BadSession)
            }
            None => Err(AuthError::BadSession),
        }
    }

    /// Ends the session of `token` (`corpus logout`); false when there was none.
    pub fn logout(&self, token: &str) -> Result<bool, AuthError> {
        let hash = secret_hash(token);
        let existed = self.store.session(&hash)?.is_some();
        self.store.delete_session(&hash)?;
        self.sessions_ended();
        Ok(existed)
    }

    pub fn existing_user(&self, id: &str) -> Result<UserRecord, AuthError> {
        self.store
            .user(id)?
            .ok_or_else(|| AuthError::NoSuchUser(id.to_owned()))
    }

    /// `users disable|enable`: a disabled user cannot log in, and its sessions end now.
    pub fn set_disabled(&self, id: &str, disabled: bool) -> Result<UserRecord, AuthError> {
        let mut user = self.existing_user(id)?;
        user.disabled = disabled;
        self.store.put_user(&user)?;
        if disabled {
            self.revoke_sessions(&SessionSelector::User(id.to_owned()))?;
            // Streams of sessions already gone check again too.
            self.sessions_ended();
        }
        Ok(user)
    }

    /// `users passwd`: a new password; the user's sessions end (whoever held the old one).
    pub fn set_password(&self, id: &str, password: &str) -> Result<UserRecord, AuthError> {
        if password.chars().count() < MIN_PASSWORD_LEN {
            return Err(AuthError::WeakPassword);
        }
        let mut user = self.existing_user(id)?;
        user.password_hash = hash_password(password)?;
        self.store.put_user(&user)?;
        self.revoke_sessions(&SessionSelector::User(id.to_owned()))?;
        Ok(user)
    }

    /// Removes the user's record and ends its sessions (environments and grants are the
    /// caller's: see `environments::forget_user`).
    pub fn delete_user(&self, id: &str) -> Result<UserRecord, AuthError> {
        let user = self
            .store
            .delete_user(id)?
            .ok_or_else(|| AuthError::NoSuchUser(id.to_owned()))?;
        self.revoke_sessions(&SessionSelector::User(id.to_owned()))?;
        self.sessions_ended();
        Ok(user)
    }

    /// Open (unexpired) sessions, oldest first, of one user or everyone's.
    pub fn sessions(&self, user: Option<&str>) -> Result<Vec<SessionView>, AuthError> {
        let now = now_unix();
        let mut sessions: Vec<SessionView> = self
            .store
            .sessions()?
            .into_iter()
            .filter(|(_, s)| s.expires_at > now && user.is_none_or(|u| u == s.user))
            .map(|(hash, record)| SessionView {
                id: session_id(&hash),
                record,
            })
            .collect();
        sessions.sort_by(|a, b| (a.record.created_at, &a.id).cmp(&(b.record.created_at, &b.id)));
        Ok(sessions)
    }

    /// Ends the selected sessions now; returns how many.
    pub fn revoke_sessions(&self, selector: &SessionSelector) -> Result<usize, AuthError> {
        let hashes: Vec<String> = self
            .store
            .sessions()?
            .into_iter()
            .filter(|(hash, session)| match selector {
                SessionSelector::All => true,
                SessionSelector::User(user) => session.user == *user,
                SessionSelector::Id(id) => session_id(hash) == *id,
            })
            .map(|(hash, _)| hash)
            .collect();
        let ended = self.store.delete_sessions(&hashes)?;
        self.sessions_ended();
        Ok(ended)
    }

    pub fn create_enrollment_token(&self, ttl: Duration) -> Result<(String, i64), AuthError> {
        self.create_enrollment_token_for(ttl, None)
    }

    /// A token that admits only the agent `agent_id` (any agent when None).
    pub fn create_enrollment_token_for(
        &self,
        ttl: Duration,
        agent_id: Option<String>,
    ) -> Result<(String, i64), AuthError> {
        let token = new_secret();
        let now = now_unix();
        let expires_at = now + ttl.as_secs() as i64;
        self.store.put_enrollment_token(
            &secret_hash(&token),
            &EnrollmentTokenRecord {
                created_at: now,
                expires_at,
                agent_id,
            },
        )?;
        Ok((token, expires_at))
    }

    /// Whether `token` is an existing, unexpired, unused enrollment token (nothing is spent).
    pub fn enrollment_token_usable(&self, token: &str) -> Result<bool, AuthError> {
        Ok(self
            .store
            .enrollment_token(&secret_hash(token))?
            .is_some_and(|t| t.expires_at > now_unix()))
    }

    /// Whether `token` is usable and may admit the agent `agent_id` (nothing is spent).
    pub fn enrollment_token_usable_by(
        &self,
        token: &str,
        agent_id: &str,
    ) -> Result<bool, AuthError> {
        Ok(self
            .store
            .enrollment_token(&secret_hash(token))?
            .is_some_and(|t| {
                t.expires_at > now_unix() && t.agent_id.as_deref().is_none_or(|id| id == agent_id)
            }))
    }

    /// Consumes an enrollment token: true only for an existing, unexpired, unused one. A token
    /// is spent even when it turns out to be expired.
    pub fn consume_enrollment_token(&self, token: &str) -> Result<bool, AuthError> {
        Ok(self
            .store
            .take_enrollment_token(&secret_hash(token))?
            .is_some_and(|t| t.expires_at > now_unix()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::SledDb;

    const HERE: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const ELSEWHERE: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn auth() -> anyhow::Result<(tempfile::TempDir, Auth)> {
        let dir = tempfile::tempdir()?;
        let store = Store::new(SledDb::open(dir.path())?);
        Ok((dir, Auth::new(store)))
    }

    #[test]
    fn login_gives_a_session_and_wrong_passwords_are_rate_limited() -> anyhow::Result<()> {
        let (_dir, auth) = auth()?;
        auth.add_user("alice", "correct horse", false)?;
        let (token, _) = auth.login("alice", "correct horse", HERE)?;
        assert_eq!(auth.session_user(&token)?, "alice");
        assert!(matches!(
            auth.session_user("nope"),
            Err(AuthError::BadSession)
        ));

        for _ in 0..FREE_FAILURES {
            assert!(matches!(
                auth.login("alice", "wrong", HERE),
                Err(AuthError::BadCredentials)
            ));
        }
        // Throttled now from this source, even with the right password...
        assert!(matches!(
            auth.login("alice", "correct horse", HERE),
            Err(AuthError::RateLimited { .. })
        ));
        // ...but never locked: the right password from another source still works.
        let (token, _) = auth.login("alice", "correct horse", ELSEWHERE)?;
        assert_eq!(auth.session_user(&token)?, "alice");
        // Other ids are not affected.
        assert!(matches!(
            auth.login("bob", "whatever1", HERE),
            Err(AuthError::BadCredentials)
        ));
        Ok(())
    }

    #[test]
    fn concurrent_guesses_cannot_slip_past_the_throttle() -> anyhow::Result<()> {
        let (_dir, auth) = auth()?;
        auth.add_user("alice", "correct horse", false)?;
        // Every guess starts at once: the lockout is counted before the slow verify, so only
        // the free attempts are verified. (Starting them together also keeps the test from
        // depending on the first lockout's length on a loaded machine.)
        let start = std::sync::Barrier::new(32);
        let verified: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..32)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        !matches!(
                            auth.login("alice", "guess", HERE),
                            Err(AuthError::RateLimited { .. })
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().ok())
                .filter(|verified| *verified)
                .count()
        });
        assert!(
            verified <= FREE_FAILURES as usize,
            "{verified} guesses were verified"
        );
        // The id is locked out (whether the lockout has already run out depends on how long
        // the verifications took, so the record is checked, not the clock).
        let failures = auth.failures.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            failures
                .get(&("alice".to_owned(), HERE))
                .is_some_and(|f| f.locked_until.is_some())
        );
        Ok(())
    }

    #[test]
    fn logins_in_flight_are_limited_per_source_and_given_back() -> anyhow::Result<()> {
        let (_dir, auth) = auth()?;
        let tickets = (0..MAX_LOGINS_PER_SOURCE)
            .map(|_| auth.admit_login(HERE))
            .collect::<Result<Vec<_>, _>>()?;
        let refused = auth.admit_login(HERE).err().map(|e| e.to_string());
        assert_eq!(
            refused.as_deref(),
            Some("too many logins from 10.0.0.1 (at most 4 at once): retry in 1 s")
        );
        // Other sources are not affected; the source's share comes back as logins end.
        assert!(auth.admit_login(ELSEWHERE).is_ok());
        drop(tickets);
        assert!(auth.admit_login(HERE).is_ok());
        assert!(auth.in_flight.lock().map(|m| m.is_empty()).unwrap_or(false));
        Ok(())
    }

    #[test]
    fn disabled_or_deleted_users_lose_their_sessions_and_logins() -> anyhow::Result<()> {
        let (_dir, auth) = auth()?;
        auth.add_user("alice", "correct horse", false)?;
        let (token, _) = auth.login("alice", "correct horse", HERE)?;
        let (other, _) = auth.login("alice", "correct horse", ELSEWHERE)?;
        let mut user = auth
            .store
            .user("alice")?
            .ok_or_else(|| anyhow::anyhow!("no alice"))?;
        user.disabled = true;
        auth.store.put_user(&user)?;
        assert!(matches!(
            auth.session_user(&token),
            Err(AuthError::BadSession)
        ));
        // The right password says the account is disabled; a wrong one says nothing more.
        assert!(matches!(
            auth.login("alice", "correct horse", HERE),
            Err(AuthError::Disabled(_))
        ));
        assert!(matches!(
            auth.login("alice", "wrong one", HERE),
            Err(AuthError::BadCredentials)
        ));
        auth.store.delete_user("alice")?;
        assert!(matches!(
            auth.session_user(&other),
            Err(AuthError::BadSession)
        ));
        Ok(())
    }

    #[test]
    fn logout_ends_only_its_own_session() -> anyhow::Result<()> {
        let (_dir, auth) = auth()?;
        auth.add_user("alice", "correct horse", false)?;
        let (first, _) = auth.login("alice", "correct horse", HERE)?;
        let (second, _) = auth.login("alice", "correct horse", HERE)?;
        assert!(auth.logout(&first)?);
        assert!(!auth.logout(&first)?);
        assert!(matches!(
            auth.session_user(&first),
            Err(AuthError::BadSession)
        ));
        assert_eq!(auth.session_user(&second)?, "alice");
        Ok(())
    }

    #[test]
    fn users_need_a_real_password_and_are_never_replaced() -> anyhow::Result<()> {
        let (_dir, auth) = auth()?;
        assert!(matches!(
            auth.add_user("a", "short", false),
            Err(AuthError::WeakPassword)
        ));
        auth.add_user("a", "long enough", true)?;
        assert!(matches!(
            auth.add_user("a", "another one", false),
            Err(AuthError::UserExists(_))
        ));
        assert!(auth.login("a", "long enough", HERE).is_ok());
        Ok(())
    }

    #[test]
    fn enrollment_tokens_work_once_and_not_after_their_ttl() -> anyhow::Result<()> {
        let (_dir, auth) = auth()?;
        let (token, _) = auth.create_enrollment_token(Duration::from_secs(3600))?;
        assert!(auth.consume_enrollment_token(&token)?);
        assert!(!auth.consume_enrollment_token(&token)?);
        let (expired, _) = auth.create_enrollment_token(Duration::ZERO)?;
        assert!(!auth.consume_enrollment_token(&expired)?);
        let (bound, _) =
            auth.create_enrollment_token_for(Duration::from_secs(60), Some("node1".into()))?;
        assert!(!auth.enrollment_token_usable_by(&bound, "node2")?);
        assert!(auth.enrollment_token_usable_by(&bound, "node1")?);
        let (any, _) = auth.create_enrollment_token(Duration::from_secs(60))?;
        assert!(auth.enrollment_token_usable_by(&any, "node2")?);
        assert!(!auth.consume_enrollment_token("made-up")?);
        Ok(())
    }
}
