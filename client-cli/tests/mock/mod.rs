//! A small in-memory chat.v1 server for the CLI's tests: just enough of each service
//! (accounts, tokens, friends, groups, messages, a Connect stream) to drive `chat` end to end.
//! Friend requests are accepted at once and every friend is online.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use daehwa::v1::*;
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

mod chat;
mod groups;

pub(crate) type Res<T> = Result<Response<T>, Status>;
pub(crate) type EventStream = Pin<Box<dyn Stream<Item = Result<ServerEvent, Status>> + Send>>;

/// Everything the mock knows; tests read and change it directly.
#[derive(Default)]
pub struct State {
    /// (username, password); user id = index + 1.
    pub users: Vec<(String, String)>,
    /// Access token → user id.
    pub access: HashMap<String, u64>,
    /// Refresh token → (user id, device id).
    pub refresh: HashMap<String, (u64, u64)>,
    /// How many Refresh calls succeeded.
    pub refreshes: u32,
    /// Lifetime of new access tokens, in seconds.
    pub access_ttl: i64,
    pub friends: HashSet<(u64, u64)>,
    pub messages: HashMap<String, Vec<Message>>,
    pub groups: Vec<Group>,
    pub reads: HashMap<(String, u64), u64>,
    counter: u64,
}

/// The mock server; clones share the state.
#[derive(Clone)]
pub struct Mock {
    pub state: Arc<Mutex<State>>,
    pub(crate) live: broadcast::Sender<Message>,
}

pub(crate) fn now() -> prost_types::Timestamp {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    prost_types::Timestamp {
        seconds: secs as i64,
        nanos: 0,
    }
}

impl Mock {
    pub fn new() -> Mock {
        let state = State {
            access_ttl: 3600,
            ..State::default()
        };
        Mock {
            state: Arc::new(Mutex::new(state)),
            live: broadcast::channel(64).0,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Serves on a free loopback port; returns the URL.
    pub async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = tonic::transport::Server::builder()
            .add_service(auth_service_server::AuthServiceServer::new(self.clone()))
            .add_service(user_service_server::UserServiceServer::new(self.clone()))
            .add_service(group_service_server::GroupServiceServer::new(self.clone()))
            .add_service(chat_service_server::ChatServiceServer::new(self.clone()))
            .add_service(presence_service_server::PresenceServiceServer::new(
                self.clone(),
            ));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(router.serve_with_incoming(incoming));
        url
    }

    pub(crate) fn me<T>(&self, request: &Request<T>) -> Result<u64, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or_default();
        self.lock()
            .access
            .get(token)
            .copied()
            .ok_or_else(|| Status::unauthenticated("bad token"))
    }

    pub(crate) fn user(st: &State, id: u64) -> Result<User, Status> {
        let (name, _) = st
            .users
            .get((id as usize).wrapping_sub(1))
            .ok_or_else(|| Status::not_found("no such user"))?;
        Ok(User {
            user_id: id,
            username: name.clone(),
            display_name: name.to_uppercase(),
            ..User::default()
        })
    }

    fn issue(st: &mut State, user: u64, device: u64) -> (String, String, prost_types::Timestamp) {
        st.counter += 1;
        let (access, refresh) = (format!("acc-{}", st.counter), format!("ref-{}", st.counter));
        st.access.insert(access.clone(), user);
        st.refresh.insert(refresh.clone(), (user, device));
        let mut expires = now();
        expires.seconds += st.access_ttl;
        (access, refresh, expires)
    }

    pub(crate) fn member(st: &State, me: u64, conversation_id: &str) -> bool {
        if let Some(g) = conversation_id.strip_prefix("g:") {
            return st
                .groups
                .iter()
                .any(|x| x.group_id.to_string() == g && x.member_ids.contains(&me));
        }
        let ids: Vec<&str> = conversation_id
            .trim_start_matches("dm:")
            .split(':')
            .collect();
        ids.contains(&me.to_string().as_str())
    }

    pub(crate) fn store(&self, me: u64, request: SendMessageRequest) -> Result<Message, Status> {
        let mut st = self.lock();
        if !Self::member(&st, me, &request.conversation_id) {
            return Err(Status::permission_denied(
                "you are not in this conversation",
            ));
        }
        let list = st
            .messages
            .entry(request.conversation_id.clone())
            .or_default();
        if let Some(m) = list
            .iter()
            .find(|m| m.client_msg_id == request.client_msg_id)
        {
            return Ok(m.clone());
        }
        let seq = list.len() as u64 + 1;
        let message = Message {
            message_id: 1000 + seq,
            conversation_id: request.conversation_id,
            seq,
            sender_id: me,
            sender_device_id: 1,
            client_msg_id: request.client_msg_id,
            content: request.content,
            created_at: Some(now()),
        };
        list.push(message.clone());
        let _ = self.live.send(message.clone());
        Ok(message)
    }
}

#[tonic::async_trait]
impl auth_service_server::AuthService for Mock {
    async fn sign_up(&self, r: Request<SignUpRequest>) -> Res<SignUpResponse> {
        let r = r.into_inner();
        let mut st = self.lock();
        if st.users.iter().any(|(n, _)| *n == r.username) {
            return Err(Status::already_exists("that username is taken"));
        }
        st.users.push((r.username, r.password));
        let id = st.users.len() as u64;
        Ok(Response::new(SignUpResponse {
            user: Some(Self::user(&st, id)?),
        }))
    }
    async fn login(&self, r: Request<LoginRequest>) -> Res<LoginResponse> {
        let r = r.into_inner();
        let mut st = self.lock();
        let Some(i) = st
            .users
            .iter()
            .position(|u| *u == (r.username.clone(), r.password.clone()))
        else {
            return Err(Status::unauthenticated("wrong username or password"));
        };
        let (user_id, device_id) = (i as u64 + 1, st.counter + 1);
        let (access_token, refresh_token, expires) = Self::issue(&mut st, user_id, device_id);
        Ok(Response::new(LoginResponse {
            access_token,
            refresh_token,
            user_id,
            device_id,
            access_expires_at: Some(expires),
        }))
    }
    async fn refresh(&self, r: Request<RefreshRequest>) -> Res<RefreshResponse> {
        let mut st = self.lock();
        let Some((user, device)) = st.refresh.remove(&r.into_inner().refresh_token) else {
            return Err(Status::unauthenticated("refresh token already used"));
        };
        st.refreshes += 1;
        let (access_token, refresh_token, expires) = Self::issue(&mut st, user, device);
        Ok(Response::new(RefreshResponse {
            access_token,
            refresh_token,
            access_expires_at: Some(expires),
        }))
    }
    async fn logout(&self, r: Request<LogoutRequest>) -> Res<LogoutResponse> {
        let me = self.me(&r)?;
        self.lock().access.retain(|_, u| *u != me);
        Ok(Response::new(LogoutResponse {}))
    }
}

#[tonic::async_trait]
impl user_service_server::UserService for Mock {
    async fn get_me(&self, r: Request<GetMeRequest>) -> Res<GetMeResponse> {
        let me = self.me(&r)?;
        Ok(Response::new(GetMeResponse {
            user: Some(Self::user(&self.lock(), me)?),
        }))
    }
    async fn get_user(&self, r: Request<GetUserRequest>) -> Res<GetUserResponse> {
        self.me(&r)?;
        let st = self.lock();
        let id = match r.into_inner().key {
            Some(get_user_request::Key::UserId(id)) => id,
            Some(get_user_request::Key::Username(name)) => {
                let i = st.users.iter().position(|(n, _)| *n == name);
                i.ok_or_else(|| Status::not_found(format!("no user named {name}")))? as u64 + 1
            }
            None => return Err(Status::invalid_argument("no key")),
        };
        Ok(Response::new(GetUserResponse {
            user: Some(Self::user(&st, id)?),
        }))
    }
    async fn update_profile(&self, _: Request<UpdateProfileRequest>) -> Res<UpdateProfileResponse> {
        Err(Status::unimplemented("mock"))
    }
    async fn get_settings(&self, _: Request<GetSettingsRequest>) -> Res<GetSettingsResponse> {
        Err(Status::unimplemented("mock"))
    }
    async fn update_settings(
        &self,
        _: Request<UpdateSettingsRequest>,
    ) -> Res<UpdateSettingsResponse> {
        Err(Status::unimplemented("mock"))
    }
    async fn add_friend(&self, r: Request<AddFriendRequest>) -> Res<AddFriendResponse> {
        let me = self.me(&r)?;
        let other = r.into_inner().user_id;
        let mut st = self.lock();
        st.friends.insert((me.min(other), me.max(other)));
        let friendship = Friendship {
            user_id: other,
            state: FriendshipState::Friends as i32,
            since: Some(now()),
        };
        Ok(Response::new(AddFriendResponse {
            friendship: Some(friendship),
        }))
    }
    async fn remove_friend(&self, r: Request<RemoveFriendRequest>) -> Res<RemoveFriendResponse> {
        let me = self.me(&r)?;
        let other = r.into_inner().user_id;
        self.lock().friends.remove(&(me.min(other), me.max(other)));
        Ok(Response::new(RemoveFriendResponse {}))
    }
    async fn list_friends(&self, r: Request<ListFriendsRequest>) -> Res<ListFriendsResponse> {
        let me = self.me(&r)?;
        let st = self.lock();
        let mut friends = Vec::new();
        for &(a, b) in &st.friends {
            if a == me || b == me {
                friends.push(Self::user(&st, if a == me { b } else { a })?);
            }
        }
        Ok(Response::new(ListFriendsResponse {
            friends,
            ..Default::default()
        }))
    }
}
