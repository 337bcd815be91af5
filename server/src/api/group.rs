//! `chat.v1.GroupService`.

use std::sync::Arc;

use daehwa::v1::{self, group_service_server::GroupService as GroupRpc};
use tonic::{Request, Response, Status};

use super::{ApiContext, convert, reply};
use crate::{
    auth::layer::caller,
    ids::{GroupId, UserId},
    service::GroupService,
};

/// Adapter for [`GroupService`].
pub struct GroupApi {
    pub groups: Arc<GroupService>,
    pub ctx: ApiContext,
}

fn users(ids: &[u64]) -> Vec<UserId> {
    ids.iter().copied().map(UserId).collect()
}

#[tonic::async_trait]
impl GroupRpc for GroupApi {
    async fn create_group(
        &self,
        request: Request<v1::CreateGroupRequest>,
    ) -> Result<Response<v1::CreateGroupResponse>, Status> {
        let me = caller(&request)?;
        let r = request.into_inner();
        let result = self
            .groups
            .create(me.user, &r.name, &users(&r.member_ids))
            .await;
        reply(
            &self.ctx.metrics,
            result.map(|g| v1::CreateGroupResponse {
                group: Some(convert::group(g)),
            }),
        )
    }

    async fn get_group(
        &self,
        request: Request<v1::GetGroupRequest>,
    ) -> Result<Response<v1::GetGroupResponse>, Status> {
        let me = caller(&request)?;
        let result = self
            .groups
            .get(me.user, GroupId(request.into_inner().group_id))
            .await;
        reply(
            &self.ctx.metrics,
            result.map(|g| v1::GetGroupResponse {
                group: Some(convert::group(g)),
            }),
        )
    }

    async fn list_groups(
        &self,
        request: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let me = caller(&request)?;
        let result = self.groups.list(me.user).await;
        reply(
            &self.ctx.metrics,
            result.map(|gs| v1::ListGroupsResponse {
                groups: gs.into_iter().map(convert::group).collect(),
            }),
        )
    }

    async fn add_members(
        &self,
        request: Request<v1::AddMembersRequest>,
    ) -> Result<Response<v1::AddMembersResponse>, Status> {
        let me = caller(&request)?;
        let r = request.into_inner();
        let result = self
            .groups
            .add_members(me.user, GroupId(r.group_id), &users(&r.user_ids))
            .await;
        reply(
            &self.ctx.metrics,
            result.map(|g| v1::AddMembersResponse {
                group: Some(convert::group(g)),
            }),
        )
    }

    async fn remove_member(
        &self,
        request: Request<v1::RemoveMemberRequest>,
    ) -> Result<Response<v1::RemoveMemberResponse>, Status> {
        let me = caller(&request)?;
        let r = request.into_inner();
        let result = self
            .groups
            .remove_member(me.user, GroupId(r.group_id), UserId(r.user_id))
            .await;
        reply(
            &self.ctx.metrics,
            result.map(|g| v1::RemoveMemberResponse {
                group: Some(convert::group(g)),
            }),
        )
    }

    async fn leave_group(
        &self,
        request: Request<v1::LeaveGroupRequest>,
    ) -> Result<Response<v1::LeaveGroupResponse>, Status> {
        let me = caller(&request)?;
        let result = self
            .groups
            .leave(me.user, GroupId(request.into_inner().group_id))
            .await;
        reply(
            &self.ctx.metrics,
            result.map(|()| v1::LeaveGroupResponse {}),
        )
    }
}
