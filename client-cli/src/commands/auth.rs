//! `signup`, `login`, `logout` and `whoami`.

use anyhow::{Context as _, Result};
use daehwa::v1::{
    GetMeRequest, LoginRequest, LogoutRequest, SignUpRequest,
    auth_service_client::AuthServiceClient,
};
use serde_json::json;
use tonic::transport::Channel;

use crate::config::{self, Profile};
use crate::prompt;
use crate::render::{clean, print_json};
use crate::session::{self, Ctx, Session};

/// `chat signup USERNAME [--display-name N]`: creates the account, then logs in.
pub async fn signup(ctx: &Ctx, username: &str, display_name: Option<String>) -> Result<()> {
    let password = prompt::password(true).await?;
    let server = ctx.server_or_default();
    let channel = session::connect(&server).await?;
    let request = SignUpRequest {
        username: username.to_string(),
        password: password.clone(),
        display_name: display_name.unwrap_or_default(),
    };
    let user = AuthServiceClient::new(channel.clone())
        .sign_up(request)
        .await?
        .into_inner()
        .user;
    let name = user.map_or_else(|| username.to_lowercase(), |u| u.username);
    if !ctx.json {
        println!("signed up as {}", clean(&name));
    }
    login_with(ctx, channel, &server, &name, &password, None).await
}

/// `chat login USERNAME [--device NAME]`.
pub async fn login(ctx: &Ctx, username: &str, device: Option<String>) -> Result<()> {
    let password = prompt::password(false).await?;
    let server = ctx.server_or_default();
    let channel = session::connect(&server).await?;
    login_with(ctx, channel, &server, username, &password, device).await
}

async fn login_with(
    ctx: &Ctx,
    channel: Channel,
    server: &str,
    username: &str,
    password: &str,
    device: Option<String>,
) -> Result<()> {
    let request = LoginRequest {
        username: username.to_string(),
        password: password.to_string(),
        device_name: device.unwrap_or_else(default_device_name),
    };
    let login = AuthServiceClient::new(channel.clone())
        .login(request)
        .await?
        .into_inner();
    let mut profile = Profile {
        server: server.to_string(),
        user_id: login.user_id,
        username: username.to_lowercase(),
        device_id: login.device_id,
        access_token: login.access_token,
        refresh_token: login.refresh_token,
        access_expires_at: login.access_expires_at.map_or(0, |t| t.seconds),
    };
    config::save(&ctx.dir, &ctx.profile, &profile)?;
    // The server's spelling of the username, for display; the login stands without it.
    let mut session = Session::with_channel(ctx, profile.clone(), channel)?;
    if let Ok(me) = session
        .call(async |mut api| api.users.get_me(GetMeRequest {}).await)
        .await
    {
        if let Some(user) = me.user.filter(|u| !u.username.is_empty()) {
            profile = session.profile().clone();
            profile.username = user.username;
            config::save(&ctx.dir, &ctx.profile, &profile)?;
        }
    }
    if ctx.json {
        print_json(&json!({
            "user_id": profile.user_id, "username": profile.username,
            "device_id": profile.device_id, "server": profile.server, "profile": ctx.profile,
        }));
    } else {
        println!(
            "logged in as {} (user {}, device {}) on {} [profile {}]",
            clean(&profile.username),
            profile.user_id,
            profile.device_id,
            profile.server,
            ctx.profile
        );
    }
    Ok(())
}

/// `chat logout`: revokes this device's tokens on the server and forgets the profile.
pub async fn logout(ctx: &Ctx) -> Result<()> {
    let Some(profile) = config::load(&ctx.dir, &ctx.profile)? else {
        println!("not logged in (profile {})", ctx.profile);
        return Ok(());
    };
    let revoked = match Session::open(ctx).await {
        Ok(mut session) => session
            .call(async |mut api| api.auth.logout(LogoutRequest {}).await)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    config::remove(&ctx.dir, &ctx.profile)?;
    match revoked {
        Ok(()) => println!("logged out {}", clean(&profile.username)),
        Err(e) => eprintln!(
            "warning: forgot the local session of {}, but the server did not confirm the logout: {}",
            clean(&profile.username),
            crate::error_text(&e)
        ),
    }
    Ok(())
}

/// `chat whoami`: the logged-in user, as the server sees it.
pub async fn whoami(ctx: &Ctx) -> Result<()> {
    let mut session = Session::open(ctx).await?;
    let me = session
        .call(async |mut api| api.users.get_me(GetMeRequest {}).await)
        .await?;
    let user = me.user.context("the server returned no user")?;
    let profile = session.profile();
    if ctx.json {
        print_json(&json!({
            "user_id": user.user_id, "username": user.username,
            "display_name": user.display_name, "status_message": user.status_message,
            "device_id": profile.device_id, "server": profile.server, "profile": ctx.profile,
        }));
        return Ok(());
    }
    let display = if user.display_name.is_empty() {
        String::new()
    } else {
        format!(" ({})", clean(&user.display_name))
    };
    println!(
        "{}{} — user {}, device {}",
        clean(&user.username),
        display,
        user.user_id,
        profile.device_id
    );
    println!("server {} [profile {}]", profile.server, ctx.profile);
    if !user.status_message.is_empty() {
        println!("status: {}", clean(&user.status_message));
    }
    Ok(())
}

/// `cli@<hostname>`, or `cli` when the host has no readable name.
fn default_device_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .map_or_else(|| "cli".to_string(), |h| format!("cli@{h}"))
}
