//! The revocation cache: a revoked device is refused at once, even while the directory still
//! answers "live" (a check racing a logout).

use std::{sync::Arc, time::Duration};

use super::{Authenticator, TokenSigner, tokens};
use crate::{backend::sqlite::SqliteDirectory, ids::DeviceId};

async fn setup() -> (Authenticator, String, DeviceId) {
    let directory = Arc::new(SqliteDirectory::in_memory().await.unwrap());
    let user = crate::backend::Directory::create_user(&*directory, "alice", "hash", "Alice")
        .await
        .unwrap();
    let device =
        crate::backend::Directory::create_device(&*directory, user.id, "phone", &[1; 32], i64::MAX)
            .await
            .unwrap();
    let auth = Authenticator::new(
        TokenSigner::from_key([3; 32]),
        directory,
        Duration::from_secs(60),
    );
    let token = auth
        .signer()
        .issue_access(user.id, device.id, tokens::now_secs() + 60);
    (auth, format!("Bearer {token}"), device.id)
}

#[tokio::test]
async fn revocation_beats_a_cached_live_answer() {
    let (auth, header, device) = setup().await;
    auth.authenticate(Some(&header)).await.expect("live device");
    auth.revoke(device).await.unwrap();
    assert!(
        auth.authenticate(Some(&header)).await.is_err(),
        "refused at once, though cached as live"
    );
}

#[tokio::test]
async fn a_tombstone_beats_a_directory_that_still_says_live() {
    let (auth, header, device) = setup().await;
    // The state a check sees when it read the directory just before a logout's write landed.
    auth.forget(device);
    assert!(auth.authenticate(Some(&header)).await.is_err());
}

#[tokio::test]
async fn missing_and_malformed_headers_are_refused() {
    let (auth, header, _) = setup().await;
    assert!(auth.authenticate(None).await.is_err());
    assert!(
        auth.authenticate(Some(header.trim_start_matches("Bearer ")))
            .await
            .is_err()
    );
    assert!(auth.authenticate(Some("Bearer ")).await.is_err());
}
