//! Password hashing with argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes). Hashing
//! takes tens of milliseconds of CPU, so it runs on the blocking pool, and a semaphore bounds
//! how many run at once (memory and CPU stay bounded under a login storm).

use std::sync::{Arc, LazyLock};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// Concurrent hash computations allowed.
static HASHING: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(4)));

/// A hash of a password nobody has, verified when the username is unknown so that unknown
/// users and wrong passwords take the same time.
static DECOY_HASH: LazyLock<Option<String>> =
    LazyLock::new(|| hash_blocking("decoy password for timing").ok());

/// Hashes a new password (PHC string format).
pub async fn hash(password: String) -> Result<String> {
    let _permit = HASHING
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Error::unavailable("server shutting down"))?;
    tokio::task::spawn_blocking(move || hash_blocking(&password))
        .await
        .map_err(|e| Error::internal(format!("hash task failed: {e}")))?
}

/// Checks a password against a stored hash; `None` runs a decoy check and returns false.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool> {
    let _permit = HASHING
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Error::unavailable("server shutting down"))?;
    tokio::task::spawn_blocking(move || {
        let matched = match stored.as_deref().or(DECOY_HASH.as_deref()) {
            Some(phc) => verify_blocking(&password, phc),
            None => false,
        };
        matched && stored.is_some()
    })
    .await
    .map_err(|e| Error::internal(format!("verify task failed: {e}")))
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
