//! Authentication: password hashing, access and refresh tokens, and the one tower layer that
//! authenticates every RPC that needs it.
//!
//! - [`password`]: argon2id hashes, computed off the async runtime.
//! - [`tokens`]: HMAC-SHA256 signed access tokens and random refresh tokens (stored hashed).
//! - [`layer`]: checks `authorization: Bearer <token>` and hands an [`AuthContext`] to the
//!   handlers through request extensions.
//! - [`Authenticator`]: verification plus the revocation check (Logout and a reused refresh
//!   token revoke at once).

pub mod layer;
pub mod password;
pub mod tokens;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    backend::Directory,
    error::{Error, Result},
    ids::{DeviceId, UserId},
};
pub use tokens::TokenSigner;

/// Who is calling: set by the auth layer on every authenticated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthContext {
    pub user: UserId,
    pub device: DeviceId,
}

/// How long a "device is not revoked" answer is trusted before the directory is asked again.
/// Revocations made by this server take effect at once (see [`DeviceCache`]); the TTL only
/// bounds how long a revocation made elsewhere could go unseen.
const LIVE_DEVICE_TTL: Duration = Duration::from_secs(30);
/// Entries kept before the cache is pruned (bounds memory).
const MAX_CACHED_DEVICES: usize = 100_000;

/// What this server knows about devices without asking the directory.
///
/// `revoked` holds tombstones of devices revoked here, kept as long as an access token issued
/// before the revocation could still be unexpired. A tombstone is set *before* the directory
/// write and checked *after* every directory read, so a check racing a logout can never put
/// the revoked device back in `live`.
#[derive(Default)]
struct DeviceCache {
    live: HashMap<DeviceId, Instant>,
    revoked: HashMap<DeviceId, Instant>,
}

/// Verifies access tokens and knows which devices are revoked.
pub struct Authenticator {
    signer: TokenSigner,
    directory: Arc<dyn Directory>,
    access_ttl: Duration,
    devices: Mutex<DeviceCache>,
}

impl Authenticator {
    /// `access_ttl` is how long issued access tokens live (how long a tombstone must stay).
    pub fn new(signer: TokenSigner, directory: Arc<dyn Directory>, access_ttl: Duration) -> Self {
        Self {
            signer,
            directory,
            access_ttl,
            devices: Mutex::default(),
        }
    }

    /// The signer, for issuing tokens at login and refresh.
    pub fn signer(&self) -> &TokenSigner {
        &self.signer
    }

    /// Checks an `authorization` header value: signature, expiry, then revocation.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<AuthContext> {
        let header = header.ok_or_else(|| {
            Error::unauthenticated(
                "missing authorization metadata: send \"authorization: Bearer <access_token>\"",
            )
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                Error::unauthenticated(
                    "malformed authorization metadata: expected \"Bearer <access_token>\"",
                )
            })?;
        let claims = self
            .signer
            .verify_access(token.trim(), tokens::now_secs())?;
        self.ensure_live(claims.device).await?;
        Ok(AuthContext {
            user: claims.user,
            device: claims.device,
        })
    }

    async fn ensure_live(&self, device: DeviceId) -> Result<()> {
        let revoked = || Error::unauthenticated("this session was revoked: log in again");
        {
            let cache = self.lock_devices();
            if cache.revoked.contains_key(&device) {
                return Err(revoked());
            }
            if cache
                .live
                .get(&device)
                .is_some_and(|checked| checked.elapsed() < LIVE_DEVICE_TTL)
            {
                return Ok(());
            }
        }
        match self.directory.device(device).await? {
            Some(d) if !d.revoked => {
                let mut cache = self.lock_devices();
                if cache.revoked.contains_key(&device) {
                    return Err(revoked());
                }
                if cache.live.len() >= MAX_CACHED_DEVICES {
                    cache.live.clear();
                }
                cache.live.insert(device, Instant::now());
                Ok(())
            }
            _ => Err(revoked()),
        }
    }

    /// Revokes a device everywhere this server looks: the cache first, then the directory.
    pub async fn revoke(&self, device: DeviceId) -> Result<()> {
        self.forget(device);
        self.directory.revoke_device(device).await
    }

    /// Marks a device revoked in the cache (the directory revoked it, or is about to).
    pub fn forget(&self, device: DeviceId) {
        let mut cache = self.lock_devices();
        cache.live.remove(&device);
        if cache.revoked.len() >= MAX_CACHED_DEVICES {
            let keep = self.access_ttl;
            cache.revoked.retain(|_, at| at.elapsed() < keep);
        }
        cache.revoked.insert(device, Instant::now());
    }

    fn lock_devices(&self) -> std::sync::MutexGuard<'_, DeviceCache> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
