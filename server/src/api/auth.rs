//! `chat.v1.AuthService`.

use std::sync::Arc;

use daehwa::v1::{self, auth_service_server::AuthService};
use tonic::{Request, Response, Status};

use super::{ApiContext, convert, reply};
use crate::{auth::layer::caller, service::AccountService};

/// Adapter for [`AccountService`].
pub struct AuthApi {
    pub accounts: Arc<AccountService>,
    pub ctx: ApiContext,
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn sign_up(
        &self,
        request: Request<v1::SignUpRequest>,
    ) -> Result<Response<v1::SignUpResponse>, Status> {
        let r = request.into_inner();
        let result = self
            .accounts
            .sign_up(&r.username, r.password, &r.display_name)
            .await;
        reply(
            &self.ctx.metrics,
            result.map(|u| v1::SignUpResponse {
                user: Some(convert::user(u)),
            }),
        )
    }

    async fn login(
        &self,
        request: Request<v1::LoginRequest>,
    ) -> Result<Response<v1::LoginResponse>, Status> {
        let r = request.into_inner();
        let result = self
            .accounts
            .login(&r.username, r.password, &r.device_name)
            .await;
        reply(
            &self.ctx.metrics,
            result.map(|t| v1::LoginResponse {
                access_token: t.access_token,
                refresh_token: t.refresh_token,
                user_id: t.user.0,
                device_id: t.device.0,
                access_expires_at: Some(convert::seconds(t.access_expires_at)),
            }),
        )
    }

    async fn refresh(
        &self,
        request: Request<v1::RefreshRequest>,
    ) -> Result<Response<v1::RefreshResponse>, Status> {
        let result = self
            .accounts
            .refresh(&request.into_inner().refresh_token)
            .await;
        reply(
            &self.ctx.metrics,
            result.map(|t| v1::RefreshResponse {
                access_token: t.access_token,
                refresh_token: t.refresh_token,
                access_expires_at: Some(convert::seconds(t.access_expires_at)),
            }),
        )
    }

    async fn logout(
        &self,
        request: Request<v1::LogoutRequest>,
    ) -> Result<Response<v1::LogoutResponse>, Status> {
        let me = caller(&request)?;
        let result = self.accounts.logout(me.user, me.device).await;
        reply(&self.ctx.metrics, result.map(|()| v1::LogoutResponse {}))
    }
}
