//! Password hashing with argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes). Hashing
//! takes tens of milliseconds of CPU, so it runs off the async runtime, on a fixed pool of
//! [`HASHING_THREADS`] threads fed by a bounded queue: CPU and memory stay bounded under a
//! login storm. A fixed pool (not tokio's blocking pool, which grows to hundreds of threads)
//! also bounds what the allocator keeps: each thread's 19 MiB working memory is reused by
//! its next hash instead of being retained once per short-lived thread.

use std::sync::{Arc, LazyLock, Mutex};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
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

fn hash_blocking(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| Error::internal(format!("argon2 salt failed: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(format!("argon2 hash failed: {e}")))
}

fn verify_blocking(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
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
}
