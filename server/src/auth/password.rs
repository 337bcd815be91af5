//! Password hashing with argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes). Hashing
//! takes tens of milliseconds of CPU, so it runs off the async runtime, on a fixed pool of
//! [`HASHING_THREADS`] threads fed by a bounded queue: CPU and memory stay bounded under a
//! login storm. A fixed pool (not tokio's blocking pool, which grows to hundreds of threads)
//! also bounds what the allocator keeps: each thread's 19 MiB working memory is reused by
//! its next hash instead of being retained once per short-lived thread.

use std::{
    cell::RefCell,
    sync::{Arc, LazyLock, Mutex},
};

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{Output, ParamsString, PasswordHash, SaltString},
};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

/// Threads that compute hashes: the most that run at once.
const HASHING_THREADS: usize = 4;
/// Hashes waiting for a thread before callers wait to queue theirs.
const HASHING_QUEUE: usize = 1024;

type Job = Box<dyn FnOnce() + Send>;

/// The queue of the hashing threads, started on first use.
static HASHING: LazyLock<Option<mpsc::Sender<Job>>> = LazyLock::new(start_hashing_threads);

fn start_hashing_threads() -> Option<mpsc::Sender<Job>> {
    let (sender, receiver) = mpsc::channel::<Job>(HASHING_QUEUE);
    let receiver = Arc::new(Mutex::new(receiver));
    for n in 0..HASHING_THREADS {
        let receiver = receiver.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("password-hash-{n}"))
            .spawn(move || {
                loop {
                    // The lock is held only while waiting for the next job, never while hashing.
                    let job = receiver
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .blocking_recv();
                    match job {
                        Some(job) => job(),
                        None => return,
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a password hashing thread");
            if n == 0 {
                return None;
            }
        }
    }
    Some(sender)
}

/// Runs `work` on a hashing thread.
async fn on_hashing_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let queue = HASHING
        .as_ref()
        .ok_or_else(|| Error::unavailable("password hashing is unavailable"))?;
    let (reply, answer) = oneshot::channel();
    queue
        .send(Box::new(move || {
            let _ = reply.send(work());
        }))
        .await
        .map_err(|_| Error::unavailable("password hashing is unavailable"))?;
    answer
        .await
        .map_err(|_| Error::internal("a password hashing job failed"))
}

/// A hash of a password nobody has, verified when the username is unknown so that unknown
/// users and wrong passwords take the same time.
static DECOY_HASH: LazyLock<Option<String>> =
    LazyLock::new(|| hash_blocking("decoy password for timing").ok());

/// Hashes a new password (PHC string format).
pub async fn hash(password: String) -> Result<String> {
    on_hashing_thread(move || hash_blocking(&password)).await?
}

/// Checks a password against a stored hash; `None` runs a decoy check and returns false.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool> {
    on_hashing_thread(move || {
        let matched = match stored.as_deref().or(DECOY_HASH.as_deref()) {
            Some(phc) => verify_blocking(&password, phc),
            None => false,
        };
        matched && stored.is_some()
    })
    .await
}

thread_local! {
    /// This thread's argon2 working memory (19 MiB with the default parameters), kept for
    /// the thread's life: a fresh 19 MiB allocation per hash left the allocator holding one
    /// more copy in RSS after almost every login (chatd reached ~550 MiB after 60 hashes).
    static WORKING_MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs argon2 into `out` with this thread's working memory.
fn compute(
    argon: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> argon2::Result<()> {
    WORKING_MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        let needed = params.block_count();
        if memory.len() != needed {
            *memory = vec![Block::default(); needed];
        }
        argon.hash_password_into_with_memory(password, salt, out, &mut memory[..])
    })
}

/// An argon2id PHC string for `password` with a random salt and the default parameters:
/// the same string `Argon2::default().hash_password` gives.
fn hash_blocking(password: &str) -> Result<String> {
    let failed = |e: &dyn std::fmt::Display| Error::internal(format!("argon2 hash failed: {e}"));
    let params = Params::default();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| failed(&e))?;
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt
        .as_salt()
        .decode_b64(&mut salt_bytes)
        .map_err(|e| failed(&e))?;
    let output = Output::init_with(Params::DEFAULT_OUTPUT_LEN, |out| {
        compute(&argon, &params, password.as_bytes(), salt_bytes, out).map_err(Into::into)
    })
    .map_err(|e| failed(&e))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| failed(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc` (any argon2 variant and parameters it
/// names); the comparison is constant-time.
fn verify_blocking(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
        parsed.salt,
        parsed.hash,
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let argon = Argon2::new(algorithm, version, params.clone());
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    Output::init_with(expected.len(), |out| {
        compute(&argon, &params, password.as_bytes(), salt_bytes, out).map_err(Into::into)
    })
    .is_ok_and(|actual| actual == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn right_and_wrong_passwords() {
        let stored = hash("correct horse".into()).await.unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(
            verify("correct horse".into(), Some(stored.clone()))
                .await
                .unwrap()
        );
        assert!(!verify("wrong horse".into(), Some(stored)).await.unwrap());
        assert!(!verify("anything".into(), None).await.unwrap());
    }

    /// Hashes stay interchangeable with the argon2 crate's own: accounts created before
    /// (by `Argon2::default().hash_password`) still log in, and new hashes verify with it.
    #[tokio::test]
    async fn hashes_match_the_argon2_crates_own() {
        use argon2::{PasswordHasher, PasswordVerifier};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let theirs = Argon2::default()
            .hash_password(b"old account", &salt)
            .unwrap()
            .to_string();
        assert!(
            verify("old account".into(), Some(theirs.clone()))
                .await
                .unwrap()
        );
        assert!(!verify("old acount".into(), Some(theirs)).await.unwrap());
        let ours = hash("new account".into()).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"new account", &parsed)
                .is_ok()
        );
        assert!(
            !verify("new account".into(), Some("not a hash".into()))
                .await
                .unwrap()
        );
    }
}
