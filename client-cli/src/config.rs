//! The profile file: one logged-in user per profile, kept in
//! `<config dir>/daehwa/<profile>.json` (or `$DAEHWA_CONFIG_DIR/<profile>.json`).
//!
//! The file holds bearer tokens, so it is created with mode 0600 inside a 0700 directory and
//! always rewritten atomically (a 0600 temp file renamed over the old one): a crash never
//! leaves a half-written profile, and other local users never see the tokens.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// Environment variable that overrides the directory holding the profile files.
pub const CONFIG_DIR_ENV: &str = "DAEHWA_CONFIG_DIR";

/// A logged-in session of one user on one server, as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The server URL the tokens belong to.
    pub server: String,
    /// The logged-in user's id.
    pub user_id: u64,
    /// The logged-in user's username (lowercase, as the server stores it).
    pub username: String,
    /// The device session the tokens belong to.
    pub device_id: u64,
    /// The short-lived bearer token.
    pub access_token: String,
    /// The long-lived, single-use refresh token.
    pub refresh_token: String,
    /// When the access token expires, in Unix seconds (0 when the server did not say).
    pub access_expires_at: i64,
}

impl Profile {
    /// Whether the access token expires within `margin` from now (or has no known expiry).
    pub fn expires_within(&self, margin: Duration) -> bool {
        if self.access_expires_at <= 0 {
            return false;
        }
        let margin = i64::try_from(margin.as_secs()).unwrap_or(i64::MAX);
        unix_now().saturating_add(margin) >= self.access_expires_at
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The directory holding the profile files: `$DAEHWA_CONFIG_DIR`, else `<config dir>/daehwa`.
pub fn default_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CONFIG_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match dirs::config_dir() {
        Some(dir) => Ok(dir.join("daehwa")),
        None => bail!("cannot find a config directory: set {CONFIG_DIR_ENV}"),
    }
}

/// Checks that a profile name is usable as a file name (letters, digits, `-`, `_`, `.`).
pub fn check_profile_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("invalid profile name {name:?}: use letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// The file of profile `name` in `dir`.
pub fn profile_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// Reads profile `name`; `None` when nobody is logged in with it.
pub fn load(dir: &Path, name: &str) -> Result<Option<Profile>> {
    check_profile_name(name)?;
    let path = profile_path(dir, name);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let profile = serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged: log in again", path.display()))?;
    Ok(Some(profile))
}

/// Writes profile `name` atomically, readable by its owner only.
pub fn save(dir: &Path, name: &str, profile: &Profile) -> Result<()> {
    check_profile_name(name)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let path = profile_path(dir, name);
    let tmp = dir.join(format!(".{name}.json.{}.tmp", std::process::id()));
    let mut text = serde_json::to_string_pretty(profile)?;
    text.push('\n');
    let written = (|| {
        // A leftover temp file of a crashed run must not lend us its permissions.
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Deletes profile `name`; returns whether it existed.
pub fn remove(dir: &Path, name: &str) -> Result<bool> {
    check_profile_name(name)?;
    let path = profile_path(dir, name);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot delete {}", path.display())),
    }
}

/// An exclusive lock on one profile, held while its tokens are refreshed so that two `chat`
/// processes never present the same single-use refresh token. Released on drop.
pub struct ProfileLock {
    path: PathBuf,
}

impl ProfileLock {
    /// Takes the lock, waiting up to 5 s; a lock older than 30 s is taken as stale.
    pub fn acquire(dir: &Path, name: &str) -> Result<ProfileLock> {
        check_profile_name(name)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let path = dir.join(format!(".{name}.lock"));
        for _ in 0..100 {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(_) => return Ok(ProfileLock { path }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let stale = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(30));
                    if stale {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot lock {}", path.display()));
                }
            }
        }
        bail!(
            "profile {name} is locked by another chat process ({})",
            path.display()
        )
    }
}

impl Drop for ProfileLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> Profile {
        Profile {
            server: "http://127.0.0.1:50051".into(),
            user_id: 7,
            username: "alice".into(),
            device_id: 3,
            access_token: "acc".into(),
            refresh_token: "ref".into(),
            access_expires_at: 1_900_000_000,
        }
    }

    #[test]
    fn round_trip_with_owner_only_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("daehwa");
        assert_eq!(load(&dir, "default").unwrap(), None);
        save(&dir, "default", &sample()).unwrap();
        assert_eq!(load(&dir, "default").unwrap(), Some(sample()));
        let mode = fs::metadata(profile_path(&dir, "default"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);

        let mut next = sample();
        next.access_token = "acc2".into();
        save(&dir, "default", &next).unwrap();
        assert_eq!(load(&dir, "default").unwrap(), Some(next));
        // Only the profile itself is left: no temp files.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("default.json")]);

        assert!(remove(&dir, "default").unwrap());
        assert!(!remove(&dir, "default").unwrap());
        assert_eq!(load(&dir, "default").unwrap(), None);
    }

    #[test]
    fn profiles_are_separate() {
        let tmp = tempfile::tempdir().unwrap();
        let mut bob = sample();
        bob.username = "bob".into();
        save(tmp.path(), "a", &sample()).unwrap();
        save(tmp.path(), "b", &bob).unwrap();
        assert_eq!(load(tmp.path(), "a").unwrap().unwrap().username, "alice");
        assert_eq!(load(tmp.path(), "b").unwrap().unwrap().username, "bob");
    }

    #[test]
    fn damaged_file_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(profile_path(tmp.path(), "x"), "{not json").unwrap();
        assert!(load(tmp.path(), "x").is_err());
    }

    #[test]
    fn profile_names_are_checked() {
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(check_profile_name(bad).is_err(), "{bad:?}");
        }
        for good in ["default", "alice", "work-2", "a_b.c"] {
            check_profile_name(good).unwrap();
        }
    }

    #[test]
    fn expiry_margin() {
        let mut p = sample();
        p.access_expires_at = unix_now() + 10;
        assert!(p.expires_within(Duration::from_secs(30)));
        p.access_expires_at = unix_now() + 3600;
        assert!(!p.expires_within(Duration::from_secs(30)));
        p.access_expires_at = 0;
        assert!(!p.expires_within(Duration::from_secs(30)));
    }

    #[test]
    fn lock_is_exclusive_and_released() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = ProfileLock::acquire(tmp.path(), "p").unwrap();
        assert!(tmp.path().join(".p.lock").exists());
        drop(lock);
        assert!(!tmp.path().join(".p.lock").exists());
        let _again = ProfileLock::acquire(tmp.path(), "p").unwrap();
    }
}
