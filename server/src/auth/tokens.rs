//! Access and refresh tokens.
//!
//! An access token is `dh1.<payload>.<mac>` (base64url, no padding): a 24-byte payload (user
//! id, device id, expiry in Unix seconds, big-endian) and its HMAC-SHA256 under the server's
//! 32-byte signing key. It is short-lived and verified without a database read; revocation is
//! checked per device by the [`super::Authenticator`].
//!
//! A refresh token is `dhr1.<32 random bytes>`; the server stores only its SHA-256, so a
//! leaked database does not leak usable tokens.
//!
//! The signing key is read from a file, created with mode 0600 on first start.

use std::{
    io::Write,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{
    error::{Error, Result},
    ids::{DeviceId, UserId},
};

const ACCESS_PREFIX: &str = "dh1.";
const REFRESH_PREFIX: &str = "dhr1.";

/// What a valid access token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessClaims {
    pub user: UserId,
    pub device: DeviceId,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Signs and verifies access tokens with one HMAC key.
pub struct TokenSigner {
    key: [u8; 32],
}

impl TokenSigner {
    /// A signer with a given key (tests, or keys from a secret store).
    pub fn from_key(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// Reads the key file, or creates it (mode 0600) with a fresh random key.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.try_into().map_err(|_| {
                    anyhow::anyhow!(
                        "signing key file {} must hold exactly 32 bytes",
                        path.display()
                    )
                })?;
                Ok(Self { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut file = open_private(path)?;
                file.write_all(&key)?;
                file.sync_all()?;
                Ok(Self { key })
            }
            Err(e) => Err(anyhow::anyhow!(
                "cannot read signing key {}: {e}",
                path.display()
            )),
        }
    }

    /// Issues an access token.
    pub fn issue_access(&self, user: UserId, device: DeviceId, expires_at: u64) -> String {
        let mut payload = [0u8; 24];
        payload[0..8].copy_from_slice(&user.0.to_be_bytes());
        payload[8..16].copy_from_slice(&device.0.to_be_bytes());
        payload[16..24].copy_from_slice(&expires_at.to_be_bytes());
        let mac = self.mac(&payload).finalize().into_bytes();
        format!("{ACCESS_PREFIX}{}.{}", B64.encode(payload), B64.encode(mac))
    }

    /// Verifies signature and expiry.
    pub fn verify_access(&self, token: &str, now_secs: u64) -> Result<AccessClaims> {
        let malformed = || Error::unauthenticated("invalid access token");
        let body = token.strip_prefix(ACCESS_PREFIX).ok_or_else(malformed)?;
        let (payload, mac) = body.split_once('.').ok_or_else(malformed)?;
        let payload = B64.decode(payload).map_err(|_| malformed())?;
        let mac = B64.decode(mac).map_err(|_| malformed())?;
        self.mac(&payload)
            .verify_slice(&mac)
            .map_err(|_| malformed())?;
        let payload: [u8; 24] = payload.try_into().map_err(|_| malformed())?;
        let word = |i: usize| u64::from_be_bytes(payload[i..i + 8].try_into().unwrap_or_default());
        let claims = AccessClaims {
            user: UserId(word(0)),
            device: DeviceId(word(8)),
            expires_at: word(16),
        };
        if claims.expires_at <= now_secs {
            return Err(Error::unauthenticated("access token expired: refresh it"));
        }
        Ok(claims)
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("hmac takes any key length"));
        mac.update(payload);
        mac
    }
}

/// A new random refresh token.
pub fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{REFRESH_PREFIX}{}", B64.encode(bytes))
}

/// The stored form of a refresh token.
pub fn refresh_token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_tampering_fails() {
        let signer = TokenSigner::from_key([7; 32]);
        let token = signer.issue_access(UserId(1), DeviceId(2), 1000);
        let claims = signer.verify_access(&token, 999).unwrap();
        assert_eq!((claims.user, claims.device), (UserId(1), DeviceId(2)));
        assert!(
            signer
                .verify_access(&token, 1000)
                .unwrap_err()
                .to_string()
                .contains("expired")
        );
        let mut tampered = token.clone().into_bytes();
        let i = ACCESS_PREFIX.len() + 3;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        assert!(
            signer
                .verify_access(std::str::from_utf8(&tampered).unwrap(), 0)
                .is_err()
        );
        assert!(
            TokenSigner::from_key([8; 32])
                .verify_access(&token, 0)
                .is_err()
        );
        for junk in ["", "dh1.", "dh1..", "dh1.!!.!!", "Bearer x"] {
            assert!(signer.verify_access(junk, 0).is_err());
        }
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/signing.key");
        let a = TokenSigner::load_or_create(&path).unwrap();
        let b = TokenSigner::load_or_create(&path).unwrap();
        assert_eq!(a.key, b.key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
