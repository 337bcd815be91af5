//! AuthService end to end: sign-up, login, refresh rotation, logout, and the statuses of bad
//! credentials (unknown user, wrong password, tampered, expired and revoked tokens).

mod common;

use std::time::Duration;

use common::{TestServer, TestUser, eventually, unique_name};
use daehwa::v1::{
    self, auth_service_client::AuthServiceClient, user_service_client::UserServiceClient,
};
use tonic::Code;

async fn sign_up(
    server: &TestServer,
    username: &str,
    password: &str,
) -> Result<v1::User, tonic::Status> {
    let mut auth = AuthServiceClient::new(server.channel().await);
    let request = v1::SignUpRequest {
        username: username.into(),
        password: password.into(),
        display_name: String::new(),
    };
    Ok(auth
        .sign_up(request)
        .await?
        .into_inner()
        .user
        .expect("user"))
}

async fn login(
    server: &TestServer,
    username: &str,
    password: &str,
) -> Result<v1::LoginResponse, tonic::Status> {
    let mut auth = AuthServiceClient::new(server.channel().await);
    let request = v1::LoginRequest {
        username: username.into(),
        password: password.into(),
        device_name: "phone".into(),
    };
    Ok(auth.login(request).await?.into_inner())
}

async fn get_me_with(server: &TestServer, token: &str) -> Result<v1::User, tonic::Status> {
    let mut users = UserServiceClient::with_interceptor(
        server.channel().await,
        common::Bearer(token.to_owned()),
    );
    Ok(users
        .get_me(v1::GetMeRequest {})
        .await?
        .into_inner()
        .user
        .expect("user"))
}

#[tokio::test]
async fn sign_up_login_and_whoami() {
    let server = TestServer::start().await;
    let name = unique_name("Alice");
    let user = sign_up(&server, &name, "long enough").await.unwrap();
    assert_eq!(
        user.username,
        name.to_lowercase(),
        "usernames are stored lowercase"
    );
    assert_eq!(
        user.display_name,
        name.to_lowercase(),
        "display name defaults to the username"
    );
    let tokens = login(&server, &name.to_uppercase(), "long enough")
        .await
        .unwrap();
    assert_eq!(tokens.user_id, user.user_id);
    assert!(tokens.access_expires_at.is_some());
    assert_eq!(
        get_me_with(&server, &tokens.access_token)
            .await
            .unwrap()
            .user_id,
        user.user_id
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_sign_ups_and_logins_get_clear_statuses() {
    let server = TestServer::start().await;
    let name = unique_name("bob");
    sign_up(&server, &name, "long enough").await.unwrap();
    assert_eq!(
        sign_up(&server, &name, "long enough")
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    assert_eq!(
        sign_up(&server, "x", "long enough")
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        sign_up(&server, "has space", "long enough")
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        sign_up(&server, &unique_name("c"), "short")
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let wrong = login(&server, &name, "wrong password").await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let unknown = login(&server, &unique_name("nobody"), "long enough")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(
        wrong.message(),
        unknown.message(),
        "unknown user and wrong password look the same"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn missing_malformed_and_tampered_tokens_are_unauthenticated() {
    let server = TestServer::start().await;
    let user = server.user("carol").await;
    let mut anonymous = UserServiceClient::new(server.channel().await);
    let status = anonymous.get_me(v1::GetMeRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("authorization"),
        "{}",
        status.message()
    );

    let mut tampered = user.access_token.clone().into_bytes();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    for token in [tampered.as_str(), "garbage", "", "dh1.AAAA.BBBB"] {
        assert_eq!(
            get_me_with(&server, token).await.unwrap_err().code(),
            Code::Unauthenticated,
            "token {token:?}"
        );
    }
    // A token signed by another server's key is refused too.
    let other = TestServer::start().await;
    let foreign = other.user("dave").await;
    assert_eq!(
        get_me_with(&server, &foreign.access_token)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    server.stop().await.unwrap();
    other.stop().await.unwrap();
}

#[tokio::test]
async fn access_tokens_expire() {
    // Expiry has one-second resolution: 3 s leaves a loaded machine time between the login
    // and the first use, and still expires well within the wait.
    let server = TestServer::start_with(|c| {
        c.access_token_ttl = Duration::from_secs(3);
        c.refresh_token_ttl = Duration::from_secs(60);
    })
    .await;
    let user = server.user("erin").await;
    get_me_with(&server, &user.access_token)
        .await
        .expect("fresh token works");
    let status = eventually("the access token to expire", || async {
        get_me_with(&server, &user.access_token).await.err()
    })
    .await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{}", status.message());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_refresh_token_revokes_the_device() {
    let server = TestServer::start().await;
    let user = server.user("frank").await;
    let mut auth = AuthServiceClient::new(server.channel().await);
    let first = auth
        .refresh(v1::RefreshRequest {
            refresh_token: user.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        first.refresh_token, user.refresh_token,
        "refresh tokens rotate"
    );
    get_me_with(&server, &first.access_token)
        .await
        .expect("new access token works");
    let second = auth
        .refresh(v1::RefreshRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    // The first refresh token was used already: presenting it again is theft. Revoke.
    let reuse = auth
        .refresh(v1::RefreshRequest {
            refresh_token: user.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), Code::Unauthenticated);
    for token in [
        &first.access_token,
        &second.access_token,
        &user.access_token,
    ] {
        assert_eq!(
            get_me_with(&server, token).await.unwrap_err().code(),
            Code::Unauthenticated,
            "device is revoked at once"
        );
    }
    let after = auth
        .refresh(v1::RefreshRequest {
            refresh_token: second.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(
        after.code(),
        Code::Unauthenticated,
        "the newest refresh token dies with the device"
    );
    let junk = auth
        .refresh(v1::RefreshRequest {
            refresh_token: "dhr1.nonsense".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(junk.code(), Code::Unauthenticated);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn logout_revokes_this_device_only_and_ends_its_streams() {
    let server = TestServer::start().await;
    let phone = server.user("gina").await;
    let laptop = phone.second_device().await;
    let mut stream = phone.connect().await;
    phone.auth().logout(v1::LogoutRequest {}).await.unwrap();
    assert_eq!(
        get_me_with(&server, &phone.access_token)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let ended = loop {
        match stream.next().await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(
        ended.code(),
        Code::Unauthenticated,
        "the live stream is told: {ended:?}"
    );
    let mut auth = AuthServiceClient::new(server.channel().await);
    let refresh = auth
        .refresh(v1::RefreshRequest {
            refresh_token: phone.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refresh.code(), Code::Unauthenticated);
    get_me_with(&server, &laptop.access_token)
        .await
        .expect("the other device stays logged in");
    let _: &TestUser = &laptop;
    server.stop().await.unwrap();
}
