//! Talking to the server: the gRPC channel, the `authorization: Bearer` interceptor and the
//! token life cycle (refresh before expiry, refresh-and-retry once on UNAUTHENTICATED).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use daehwa::v1::{
    RefreshRequest, auth_service_client::AuthServiceClient, chat_service_client::ChatServiceClient,
    group_service_client::GroupServiceClient, presence_service_client::PresenceServiceClient,
    user_service_client::UserServiceClient,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::config::{self, Profile, ProfileLock};

/// The server used when neither `--server`, `DAEHWA_SERVER` nor the profile names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// A token this close to expiry is refreshed before use.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// The global command-line options every command sees.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `--server` / `DAEHWA_SERVER`, when given.
    pub server: Option<String>,
    /// The profile name (`--profile` / `DAEHWA_PROFILE`).
    pub profile: String,
    /// Print JSON lines instead of text.
    pub json: bool,
    /// Where profile files live.
    pub dir: PathBuf,
}

impl Ctx {
    /// The server to use when no profile says otherwise.
    pub fn server_or_default(&self) -> String {
        self.server
            .clone()
            .unwrap_or_else(|| DEFAULT_SERVER.to_string())
    }

    /// How to log in again with this profile, for messages to the user.
    pub fn login_hint(&self, username: &str) -> String {
        if self.profile == "default" {
            format!("chat login {username}")
        } else {
            format!("chat --profile {} login {username}", self.profile)
        }
    }
}

/// Opens a channel to `url` (a bare `host:port` gets `http://`), failing fast when the
/// server cannot be reached.
pub async fn connect(url: &str) -> Result<Channel> {
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid server URL {url:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the server at {url}"))
}

/// Adds `authorization: Bearer <access token>` to every request; the token is shared with
/// the [`Session`] so a refresh takes effect on clients built earlier.
#[derive(Clone)]
pub struct AuthInterceptor {
    token: Arc<RwLock<MetadataValue<Ascii>>>,
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = self.token.read().unwrap_or_else(|e| e.into_inner()).clone();
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// A channel whose requests carry the access token.
pub type Authed = InterceptedService<Channel, AuthInterceptor>;

/// One client per service, all on the same authenticated channel. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    /// AuthService (Logout).
    pub auth: AuthServiceClient<Authed>,
    /// UserService: profiles and friends.
    pub users: UserServiceClient<Authed>,
    /// ChatService: messages and the live stream.
    pub chat: ChatServiceClient<Authed>,
    /// GroupService.
    pub groups: GroupServiceClient<Authed>,
    /// PresenceService.
    pub presence: PresenceServiceClient<Authed>,
}

impl Api {
    fn new(channel: &Channel, interceptor: &AuthInterceptor) -> Api {
        let ch = || channel.clone();
        let ic = || interceptor.clone();
        Api {
            auth: AuthServiceClient::with_interceptor(ch(), ic()),
            users: UserServiceClient::with_interceptor(ch(), ic()),
            chat: ChatServiceClient::with_interceptor(ch(), ic()),
            groups: GroupServiceClient::with_interceptor(ch(), ic()),
            presence: PresenceServiceClient::with_interceptor(ch(), ic()),
        }
    }
}

fn bearer(token: &str) -> Result<MetadataValue<Ascii>> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| anyhow!("the stored access token is not valid header text: log in again"))
}

/// A logged-in profile with an open channel to its server.
pub struct Session {
    ctx: Ctx,
    profile: Profile,
    channel: Channel,
    interceptor: AuthInterceptor,
}

impl Session {
    /// Loads the profile of `ctx` and connects to its server (or `--server` when given).
    pub async fn open(ctx: &Ctx) -> Result<Session> {
        let Some(profile) = config::load(&ctx.dir, &ctx.profile)? else {
            bail!(
                "not logged in (profile {:?}): run `{}` first",
                ctx.profile,
                ctx.login_hint("USERNAME")
            );
        };
        let server = ctx.server.clone().unwrap_or_else(|| profile.server.clone());
        let channel = connect(&server).await?;
        Session::with_channel(ctx, profile, channel)
    }

    /// A session for `profile` on an already open channel (right after login).
    pub fn with_channel(ctx: &Ctx, profile: Profile, channel: Channel) -> Result<Session> {
        let token = Arc::new(RwLock::new(bearer(&profile.access_token)?));
        Ok(Session {
            ctx: ctx.clone(),
            profile,
            channel,
            interceptor: AuthInterceptor { token },
        })
    }

    /// The stored profile (user, device, tokens).
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The logged-in user's id.
    pub fn me(&self) -> u64 {
        self.profile.user_id
    }

    /// Fresh clients carrying the current access token.
    pub fn api(&self) -> Api {
        Api::new(&self.channel, &self.interceptor)
    }

    /// Runs one RPC: refreshes the token first when it is about to expire, and when the
    /// server answers UNAUTHENTICATED refreshes once and calls `f` a second time.
    pub async fn call<T>(
        &mut self,
        mut f: impl AsyncFnMut(Api) -> Result<Response<T>, Status>,
    ) -> Result<T> {
        self.ensure_fresh().await?;
        match f(self.api()).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) if status.code() == Code::Unauthenticated => {
                self.refresh().await?;
                Ok(f(self.api()).await?.into_inner())
            }
            Err(status) => Err(status.into()),
        }
    }

    /// Refreshes the token pair when the access token expires within 30 s.
    pub async fn ensure_fresh(&mut self) -> Result<()> {
        if self.profile.expires_within(REFRESH_MARGIN) {
            self.refresh().await?;
        }
        Ok(())
    }

    /// Trades the refresh token for a new pair and saves it. Holds the profile lock so that
    /// concurrent `chat` processes never spend the same single-use refresh token twice.
    pub async fn refresh(&mut self) -> Result<()> {
        let _lock = ProfileLock::acquire(&self.ctx.dir, &self.ctx.profile)?;
        match config::load(&self.ctx.dir, &self.ctx.profile)? {
            None => bail!(
                "you were logged out meanwhile: run `{}`",
                self.ctx.login_hint(&self.profile.username)
            ),
            Some(disk) => {
                let same_device = disk.user_id == self.profile.user_id
                    && disk.device_id == self.profile.device_id;
                if same_device && disk.refresh_token != self.profile.refresh_token {
                    // Another chat process refreshed already, so our refresh token is spent:
                    // presenting it again would make the server revoke this device. Continue
                    // from the saved pair, refreshing it (it is unspent) if it is about to
                    // expire too, as with access tokens shorter than the margin.
                    let expiring = disk.expires_within(REFRESH_MARGIN);
                    self.adopt(disk)?;
                    if !expiring {
                        return Ok(());
                    }
                }
            }
        }
        let mut auth = AuthServiceClient::new(self.channel.clone());
        let request = RefreshRequest {
            refresh_token: self.profile.refresh_token.clone(),
        };
        let response = match auth.refresh(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::Unavailable => return Err(status.into()),
            Err(status) => bail!(
                "your session has ended ({}): run `{}` again",
                status.message(),
                self.ctx.login_hint(&self.profile.username)
            ),
        };
        let mut next = self.profile.clone();
        next.access_token = response.access_token;
        next.refresh_token = response.refresh_token;
        next.access_expires_at = response.access_expires_at.map_or(0, |t| t.seconds);
        config::save(&self.ctx.dir, &self.ctx.profile, &next)?;
        self.adopt(next)
    }

    fn adopt(&mut self, profile: Profile) -> Result<()> {
        let value = bearer(&profile.access_token)?;
        *self
            .interceptor
            .token
            .write()
            .unwrap_or_else(|e| e.into_inner()) = value;
        self.profile = profile;
        Ok(())
    }
}
