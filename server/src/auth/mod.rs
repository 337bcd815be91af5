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
/// Revocations made by this server take effect at once (the cache is updated); the TTL only
/// bounds how long a revocation made elsewhere could go unseen.
const LIVE_DEVICE_TTL: Duration = Duration::from_secs(30);
/// Entries kept before the cache is cleared (bounds memory).
const MAX_CACHED_DEVICES: usize = 100_000;

/// Verifies access tokens and knows which devices are revoked.
pub struct Authenticator {
    signer: TokenSigner,
    directory: Arc<dyn Directory>,
    live_devices: Mutex<HashMap<DeviceId, Instant>>,
}

impl Authenticator {
    pub fn new(signer: TokenSigner, directory: Arc<dyn Directory>) -> Self {
        Self {
            signer,
            directory,
            live_devices: Mutex::default(),
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
        let fresh = {
            let cache = self.live_devices.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(&device)
                .is_some_and(|checked| checked.elapsed() < LIVE_DEVICE_TTL)
        };
        if fresh {
            return Ok(());
        }
        match self.directory.device(device).await? {
            Some(d) if !d.revoked => {
                let mut cache = self.live_devices.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= MAX_CACHED_DEVICES {
                    cache.clear();
                }
                cache.insert(device, Instant::now());
                Ok(())
            }
            _ => Err(Error::unauthenticated(
                "this session was revoked: log in again",
            )),
        }
    }

    /// Revokes a device everywhere this server looks: the directory and the cache.
    pub async fn revoke(&self, device: DeviceId) -> Result<()> {
        self.forget(device);
        self.directory.revoke_device(device).await
    }

    /// Drops a device from the cache (after the directory revoked it).
    pub fn forget(&self, device: DeviceId) {
        self.live_devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&device);
    }
}
