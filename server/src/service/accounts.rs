//! Accounts and device sessions: sign-up, login, token refresh with rotation, logout.

use std::{sync::Arc, time::Duration};

use crate::{
    auth::{
        Authenticator, password,
        tokens::{new_refresh_token, now_ms, now_secs, refresh_token_hash},
    },
    backend::{
        Directory,
        directory::{RefreshOutcome, UserRecord},
    },
    error::{Error, Result},
    ids::{DeviceId, UserId},
    service::{delivery::Delivery, presence::PresenceService, validate},
};

/// Tokens handed to a device.
#[derive(Debug, Clone)]
pub struct IssuedTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub user: UserId,
    pub device: DeviceId,
    /// Unix seconds.
    pub access_expires_at: u64,
}

/// Sign-up, login, refresh and logout.
pub struct AccountService {
    directory: Arc<dyn Directory>,
    auth: Arc<Authenticator>,
    delivery: Arc<Delivery>,
    presence: Arc<PresenceService>,
    access_ttl: Duration,
    refresh_ttl: Duration,
}

impl AccountService {
    /// Accounts over `directory`; tokens from `auth`; logout ends the device's streams on
    /// every server through `delivery`.
    pub fn new(
        directory: Arc<dyn Directory>,
        auth: Arc<Authenticator>,
        delivery: Arc<Delivery>,
        presence: Arc<PresenceService>,
        access_ttl: Duration,
        refresh_ttl: Duration,
    ) -> Self {
        Self {
            directory,
            auth,
            delivery,
            presence,
            access_ttl,
            refresh_ttl,
        }
    }

    /// Creates an account.
    pub async fn sign_up(
        &self,
        username: &str,
        password_text: String,
        display_name: &str,
    ) -> Result<UserRecord> {
        let username = validate::username(username)?;
        validate::password(&password_text)?;
        let display_name = validate::short_text("display_name", display_name, 64)?;
        let display_name = if display_name.is_empty() {
            username.clone()
        } else {
            display_name
        };
        if self.directory.user_by_name(&username).await?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "username {username:?} is taken"
            )));
        }
        let hash = password::hash(password_text).await?;
        self.directory
            .create_user(&username, &hash, &display_name)
            .await
    }

    /// Checks the password and opens a session for a new device.
    pub async fn login(
        &self,
        username: &str,
        password_text: String,
        device_name: &str,
    ) -> Result<IssuedTokens> {
        let wrong = || Error::unauthenticated("wrong username or password");
        let username = validate::username(username).map_err(|_| wrong())?;
        let device_name = validate::short_text("device_name", device_name, 64)?;
        let found = self.directory.user_credentials(&username).await?;
        let stored_hash = found.as_ref().map(|(_, hash)| hash.clone());
        if !password::verify(password_text, stored_hash).await? {
            return Err(wrong());
        }
        let Some((user, _)) = found else {
            return Err(wrong());
        };
        let refresh_token = new_refresh_token();
        let device = self
            .directory
            .create_device(
                user.id,
                if device_name.is_empty() {
                    "device"
                } else {
                    &device_name
                },
                &refresh_token_hash(&refresh_token),
                self.refresh_expiry_ms(),
            )
            .await?;
        tracing::info!(user_id = %user.id, device_id = %device.id, "login");
        Ok(self.issue(user.id, device.id, refresh_token))
    }

    /// Rotates a refresh token. A token used twice revokes its device and ends its streams.
    pub async fn refresh(&self, refresh_token: &str) -> Result<IssuedTokens> {
        if refresh_token.is_empty() || refresh_token.len() > 256 {
            return Err(Error::unauthenticated("invalid refresh token"));
        }
        let new_token = new_refresh_token();
        let outcome = self
            .directory
            .rotate_refresh_token(
                &refresh_token_hash(refresh_token),
                &refresh_token_hash(&new_token),
                self.refresh_expiry_ms(),
                now_ms(),
            )
            .await?;
        match outcome {
            RefreshOutcome::Rotated { user, device } => Ok(self.issue(user, device, new_token)),
            RefreshOutcome::Reused { user, device } => {
                tracing::warn!(user_id = %user, device_id = %device, "refresh token reused: device revoked");
                self.auth.forget(device);
                self.delivery.close_device(user, device).await;
                Err(Error::unauthenticated(
                    "refresh token was already used: this session is revoked, log in again",
                ))
            }
            RefreshOutcome::Revoked => Err(Error::unauthenticated(
                "refresh token expired or revoked: log in again",
            )),
            RefreshOutcome::Unknown => Err(Error::unauthenticated("invalid refresh token")),
        }
    }

    /// Revokes the calling device at once and ends its streams.
    pub async fn logout(&self, user: UserId, device: DeviceId) -> Result<()> {
        self.auth.revoke(device).await?;
        self.delivery.close_device(user, device).await;
        let others = self.delivery.hub().has_other_device(user, device);
        self.presence.logged_out(user, others);
        tracing::info!(user_id = %user, device_id = %device, "logout");
        Ok(())
    }

    fn issue(&self, user: UserId, device: DeviceId, refresh_token: String) -> IssuedTokens {
        let access_expires_at = now_secs() + self.access_ttl.as_secs();
        IssuedTokens {
            access_token: self
                .auth
                .signer()
                .issue_access(user, device, access_expires_at),
            refresh_token,
            user,
            device,
            access_expires_at,
        }
    }

    fn refresh_expiry_ms(&self) -> i64 {
        now_ms() + self.refresh_ttl.as_millis() as i64
    }
}
