//! The mock's GroupService.

use daehwa::v1::*;
use tonic::{Request, Response, Status};

use super::{Mock, Res, now};

#[tonic::async_trait]
impl group_service_server::GroupService for Mock {
    async fn create_group(&self, r: Request<CreateGroupRequest>) -> Res<CreateGroupResponse> {
        let me = self.me(&r)?;
        let r = r.into_inner();
        let mut st = self.lock();
        let group_id = st.groups.len() as u64 + 1;
        let mut member_ids = vec![me];
        member_ids.extend(r.member_ids);
        let group = Group {
            group_id,
            name: r.name,
            owner_id: me,
            member_ids,
            created_at: Some(now()),
            conversation_id: format!("g:{group_id}"),
        };
        st.groups.push(group.clone());
        Ok(Response::new(CreateGroupResponse { group: Some(group) }))
    }
    async fn get_group(&self, _: Request<GetGroupRequest>) -> Res<GetGroupResponse> {
        Err(Status::unimplemented("mock"))
    }
    async fn list_groups(&self, r: Request<ListGroupsRequest>) -> Res<ListGroupsResponse> {
        let me = self.me(&r)?;
        let groups = self
            .lock()
            .groups
            .iter()
            .filter(|g| g.member_ids.contains(&me))
            .cloned()
            .collect();
        Ok(Response::new(ListGroupsResponse { groups }))
    }
    async fn add_members(&self, r: Request<AddMembersRequest>) -> Res<AddMembersResponse> {
        self.me(&r)?;
        let r = r.into_inner();
        let mut st = self.lock();
        let group = st
            .groups
            .iter_mut()
            .find(|g| g.group_id == r.group_id)
            .ok_or_else(|| Status::not_found("no such group"))?;
        group.member_ids.extend(r.user_ids);
        Ok(Response::new(AddMembersResponse {
            group: Some(group.clone()),
        }))
    }
    async fn remove_member(&self, _: Request<RemoveMemberRequest>) -> Res<RemoveMemberResponse> {
        Err(Status::unimplemented("mock"))
    }
    async fn leave_group(&self, r: Request<LeaveGroupRequest>) -> Res<LeaveGroupResponse> {
        let me = self.me(&r)?;
        let id = r.into_inner().group_id;
        for g in self.lock().groups.iter_mut().filter(|g| g.group_id == id) {
            g.member_ids.retain(|&m| m != me);
        }
        Ok(Response::new(LeaveGroupResponse {}))
    }
}
