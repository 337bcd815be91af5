//! `chat.v1.UserService`.

use std::sync::Arc;

use daehwa::v1::{self, get_user_request::Key, user_service_server::UserService};
use tonic::{Request, Response, Status};

use super::{ApiContext, convert, reply};
use crate::{
    auth::{layer::caller, tokens::now_ms},
    backend::directory::ProfileUpdate,
    error::Error,
    ids::UserId,
    service::{PeopleService, people::UserKey, presence::timestamp},
};

/// Adapter for [`PeopleService`].
pub struct UserApi {
    pub people: Arc<PeopleService>,
    pub ctx: ApiContext,
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn get_me(
        &self,
        request: Request<v1::GetMeRequest>,
    ) -> Result<Response<v1::GetMeResponse>, Status> {
        let me = caller(&request)?;
        let result = self.people.user(UserKey::Id(me.user)).await;
        reply(
            &self.ctx.metrics,
            result.map(|u| v1::GetMeResponse {
                user: Some(convert::user(u)),
            }),
        )
    }

    async fn get_user(
        &self,
        request: Request<v1::GetUserRequest>,
    ) -> Result<Response<v1::GetUserResponse>, Status> {
        let key = match request.into_inner().key {
            Some(Key::UserId(id)) => Ok(UserKey::Id(UserId(id))),
            Some(Key::Username(name)) => Ok(UserKey::Name(name)),
            None => Err(Error::invalid("set user_id or username")),
        };
        let result = match key {
            Ok(key) => self.people.user(key).await,
            Err(e) => Err(e),
        };
        reply(
            &self.ctx.metrics,
            result.map(|u| v1::GetUserResponse {
                user: Some(convert::user(u)),
            }),
        )
    }

    async fn update_profile(
        &self,
        request: Request<v1::UpdateProfileRequest>,
    ) -> Result<Response<v1::UpdateProfileResponse>, Status> {
        let me = caller(&request)?;
        let r = request.into_inner();
        let update = ProfileUpdate {
            display_name: r.display_name,
            status_message: r.status_message,
            avatar_url: r.avatar_url,
        };
        let result = self.people.update_profile(me.user, update).await;
        reply(
            &self.ctx.metrics,
            result.map(|u| v1::UpdateProfileResponse {
                user: Some(convert::user(u)),
            }),
        )
    }

    async fn get_settings(
        &self,
        request: Request<v1::GetSettingsRequest>,
    ) -> Result<Response<v1::GetSettingsResponse>, Status> {
        let me = caller(&request)?;
        let result = self.people.settings(me.user).await;
        reply(
            &self.ctx.metrics,
            result.map(|s| v1::GetSettingsResponse {
                settings: Some(convert::settings(s)),
            }),
        )
    }

    async fn update_settings(
        &self,
        request: Request<v1::UpdateSettingsRequest>,
    ) -> Result<Response<v1::UpdateSettingsResponse>, Status> {
        let me = caller(&request)?;
        let result = match request.into_inner().settings {
            Some(s) => {
                self.people
                    .update_settings(me.user, convert::settings_from(s))
                    .await
            }
            None => Err(Error::invalid("settings must be set")),
        };
        reply(
            &self.ctx.metrics,
            result.map(|s| v1::UpdateSettingsResponse {
                settings: Some(convert::settings(s)),
            }),
        )
    }

    async fn add_friend(
        &self,
        request: Request<v1::AddFriendRequest>,
    ) -> Result<Response<v1::AddFriendResponse>, Status> {
        let me = caller(&request)?;
        let other = UserId(request.into_inner().user_id);
        let result = self.people.add_friend(me.user, other).await;
        reply(
            &self.ctx.metrics,
            result.map(|relation| v1::AddFriendResponse {
                friendship: Some(v1::Friendship {
                    user_id: other.0,
                    state: convert::friendship_state(relation) as i32,
                    since: Some(timestamp(now_ms())),
                }),
            }),
        )
    }

    async fn remove_friend(
        &self,
        request: Request<v1::RemoveFriendRequest>,
    ) -> Result<Response<v1::RemoveFriendResponse>, Status> {
        let me = caller(&request)?;
        let result = self
            .people
            .remove_friend(me.user, UserId(request.into_inner().user_id))
            .await;
        reply(
            &self.ctx.metrics,
            result.map(|()| v1::RemoveFriendResponse {}),
        )
    }

    async fn list_friends(
        &self,
        request: Request<v1::ListFriendsRequest>,
    ) -> Result<Response<v1::ListFriendsResponse>, Status> {
        let me = caller(&request)?;
        let result = self.people.friends(me.user).await;
        let users = |list: Vec<_>| list.into_iter().map(convert::user).collect();
        reply(
            &self.ctx.metrics,
            result.map(|l| v1::ListFriendsResponse {
                friends: users(l.friends),
                incoming_requests: users(l.incoming),
                outgoing_requests: users(l.outgoing),
            }),
        )
    }
}
