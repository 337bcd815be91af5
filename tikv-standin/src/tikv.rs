//! The TiKV service: the transactional calls of `tikv-client` 0.4's optimistic transactions,
//! each checked against the region named in its context and run on the shared [`Mvcc`].

use std::sync::{Arc, MutexGuard};

use tonic::{Request, Response, Status, service::Routes};

use crate::{
    Region, Shared,
    kvproto::{
        errorpb,
        kvrpcpb::{self, Context, KeyError, KvPair, TxnInfo},
        tikvpb::tikv_server::{Tikv, TikvServer},
    },
    mvcc::Mvcc,
};

/// The TiKV routes of a stand-in.
pub(crate) fn router(shared: Arc<Shared>) -> Routes {
    Routes::new(TikvServer::new(Store(shared)))
}

struct Store(Arc<Shared>);

type RegionResult<'a> = Result<&'a Region, Box<errorpb::Error>>;

impl Store {
    fn mvcc(&self) -> MutexGuard<'_, Mvcc> {
        self.0.mvcc.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The region the request names, if it holds every key.
    fn region<'k>(
        &self,
        context: Option<&Context>,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> RegionResult<'_> {
        let id = context.map_or(0, |c| c.region_id);
        let Some(region) = self.0.region_by_id(id) else {
            return Err(Box::new(errorpb::Error {
                message: format!("region {id} not found"),
                region_not_found: Some(errorpb::RegionNotFound { region_id: id }),
                ..Default::default()
            }));
        };
        for key in keys {
            if !region.contains(key) {
                return Err(Box::new(errorpb::Error {
                    message: format!("key is not in region {id}"),
                    key_not_in_region: Some(errorpb::KeyNotInRegion {
                        key: key.to_vec(),
                        region_id: id,
                        start_key: region.start.clone(),
                        end_key: region.end.clone(),
                    }),
                    ..Default::default()
                }));
            }
        }
        Ok(region)
    }

    /// Counts the lock and conflict errors of a response.
    fn count_errors<'e>(&self, errors: impl IntoIterator<Item = &'e KeyError>) {
        use std::sync::atomic::Ordering::Relaxed;
        for e in errors {
            if e.locked.is_some() {
                self.0.counters.key_is_locked.fetch_add(1, Relaxed);
            }
            if e.conflict.is_some() {
                self.0.counters.write_conflicts.fetch_add(1, Relaxed);
            }
        }
    }

    /// The pairs of `[lo, hi)` visible at `version`, a lock reported in place of its key's
    /// value, at most `limit` of them.
    fn scan(&self, lo: &[u8], hi: &[u8], version: u64, limit: usize, reverse: bool) -> Vec<KvPair> {
        let mvcc = self.mvcc();
        let mut pairs = Vec::new();
        for key in mvcc.keys_in(lo, hi, reverse) {
            if pairs.len() >= limit {
                break;
            }
            match mvcc.get(&key, version) {
                Ok(Some(value)) => pairs.push(KvPair {
                    key,
                    value,
                    error: None,
                }),
                Ok(None) => {}
                Err(error) => pairs.push(KvPair {
                    key,
                    value: Vec::new(),
                    error: Some(*error),
                }),
            }
        }
        pairs
    }

    /// The scan fault: every pair twice, plus the visible keys just below `lo` and at or above
    /// `hi`.
    fn corrupt_scan(&self, pairs: Vec<KvPair>, lo: &[u8], hi: &[u8], version: u64) -> Vec<KvPair> {
        let before = self.scan(&[], lo, version, 1, true);
        let after = if hi.is_empty() {
            Vec::new()
        } else {
            self.scan(hi, &[], version, 2, false)
        };
        let clean = |p: &KvPair| p.error.is_none();
        let mut out: Vec<KvPair> = before.into_iter().filter(clean).collect();
        for pair in pairs {
            out.push(pair.clone());
            out.push(pair);
        }
        out.extend(after.into_iter().filter(clean));
        out
    }
}

macro_rules! region_or_return {
    ($self:ident, $context:expr, $keys:expr, $response:ty) => {
        match $self.region($context, $keys) {
            Ok(region) => region,
            Err(region_error) => {
                return Ok(Response::new(<$response>::default_with_region_error(
                    *region_error,
                )));
            }
        }
    };
}

/// Responses that can carry a region error.
trait WithRegionError: Default {
    fn default_with_region_error(error: errorpb::Error) -> Self;
}

macro_rules! with_region_error {
    ($($t:ty),*) => {$(
        impl WithRegionError for $t {
            fn default_with_region_error(error: errorpb::Error) -> Self {
                Self { region_error: Some(error), ..Default::default() }
            }
        }
    )*};
}

with_region_error!(
    kvrpcpb::GetResponse,
    kvrpcpb::ScanResponse,
    kvrpcpb::BatchGetResponse,
    kvrpcpb::PrewriteResponse,
    kvrpcpb::CommitResponse,
    kvrpcpb::BatchRollbackResponse,
    kvrpcpb::CheckTxnStatusResponse,
    kvrpcpb::ResolveLockResponse,
    kvrpcpb::TxnHeartBeatResponse
);

#[tonic::async_trait]
impl Tikv for Store {
    async fn kv_get(
        &self,
        request: Request<kvrpcpb::GetRequest>,
    ) -> Result<Response<kvrpcpb::GetResponse>, Status> {
        self.0.check_running()?;
        let req = request.into_inner();
        region_or_return!(
            self,
            req.context.as_ref(),
            [req.key.as_slice()],
            kvrpcpb::GetResponse
        );
        let result = self.mvcc().get(&req.key, req.version);
        let mut response = kvrpcpb::GetResponse::default();
        match result {
            Ok(Some(value)) => response.value = value,
            Ok(None) => response.not_found = true,
            Err(error) => {
                self.count_errors([error.as_ref()]);
                response.error = Some(*error);
            }
        }
        Ok(Response::new(response))
    }

    async fn kv_scan(
        &self,
        request: Request<kvrpcpb::ScanRequest>,
    ) -> Result<Response<kvrpcpb::ScanResponse>, Status> {
        self.0.check_running()?;
        let req = request.into_inner();
        // A reverse scan covers [end_key, start_key).
        let (lo, hi) = if req.reverse {
            (req.end_key.as_slice(), req.start_key.as_slice())
        } else {
            (req.start_key.as_slice(), req.end_key.as_slice())
        };
        let region = region_or_return!(self, req.context.as_ref(), [lo], kvrpcpb::ScanResponse);
        // Never past the region's end.
        let hi = match (hi.is_empty(), region.end.is_empty()) {
            (_, true) => hi.to_vec(),
            (true, false) => region.end.clone(),
            (false, false) => hi.min(region.end.as_slice()).to_vec(),
        };
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        let mut pairs = self.scan(lo, &hi, req.version, limit, req.reverse);
        self.count_errors(pairs.iter().filter_map(|p| p.error.as_ref()));
        if self.0.scan_fault && !req.reverse {
            pairs = self.corrupt_scan(pairs, lo, &hi, req.version);
        }
        if req.key_only {
            pairs.iter_mut().for_each(|p| p.value.clear());
        }
        Ok(Response::new(kvrpcpb::ScanResponse {
            pairs,
            ..Default::default()
        }))
    }

    async fn kv_batch_get(
        &self,
        request: Request<kvrpcpb::BatchGetRequest>,
    ) -> Result<Response<kvrpcpb::BatchGetResponse>, Status> {
        self.0.check_running()?;
        let req = request.into_inner();
        region_or_return!(
            self,
            req.context.as_ref(),
            req.keys.iter().map(Vec::as_slice),
            kvrpcpb::BatchGetResponse
        );
        let mvcc = self.mvcc();
        let mut pairs = Vec::new();
        for key in req.keys {
            match mvcc.get(&key, req.version) {
                Ok(Some(value)) => pairs.push(KvPair {
                    key,
                    value,
                    error: None,
                }),
                Ok(None) => {}
                Err(error) => pairs.push(KvPair {
                    key,
                    value: Vec::new(),
                    error: Some(*error),
                }),
            }
        }
        drop(mvcc);
        self.count_errors(pairs.iter().filter_map(|p| p.error.as_ref()));
        Ok(Response::new(kvrpcpb::BatchGetResponse {
            pairs,
            ..Default::default()
        }))
    }

    async fn kv_prewrite(
        &self,
        request: Request<kvrpcpb::PrewriteRequest>,
    ) -> Result<Response<kvrpcpb::PrewriteResponse>, Status> {
        self.0.check_running()?;
        let req = request.into_inner();
        region_or_return!(
            self,
            req.context.as_ref(),
            req.mutations.iter().map(|m| m.key.as_slice()),
            kvrpcpb::PrewriteResponse
        );
        if req.use_async_commit || req.for_update_ts != 0 {
            return Err(Status::unimplemented(
                "the TiKV stand-in implements optimistic 2PC and 1PC only",
            ));
        }
        // The 1PC commit timestamp is drawn under the storage lock, so no reader can hold a
        // later timestamp and miss this commit.
        let shared = self.0.clone();
        let allocate = move || shared.next_version();
        let (errors, one_pc_commit_ts) = self.mvcc().prewrite(
            &req.mutations,
            &req.primary_lock,
            req.start_version,
            req.lock_ttl,
            req.txn_size,
            req.try_one_pc.then_some(&allocate as &dyn Fn() -> u64),
        );
        self.count_errors(&errors);
        if one_pc_commit_ts.is_some() {
            use std::sync::atomic::Ordering::Relaxed;
            self.0.counters.one_pc_commits.fetch_add(1, Relaxed);
        }
        Ok(Response::new(kvrpcpb::PrewriteResponse {
            errors,
            one_pc_commit_ts: one_pc_commit_ts.unwrap_or(0),
            ..Default::default()
        }))
    }

    async fn kv_commit(
        &self,
        request: Request<kvrpcpb::CommitRequest>,
    ) -> Result<Response<kvrpcpb::CommitResponse>, Status> {
        self.0.check_running()?;
        let req = request.into_inner();
        region_or_return!(
            self,
            req.context.as_ref(),
            req.keys.iter().map(Vec::as_slice),
            kvrpcpb::CommitResponse
        );
        let result = self
            .mvcc()
            .commit(&req.keys, req.start_version, req.commit_version);
        let mut response = kvrpcpb::CommitResponse::default();
        match result {
            Ok(()) => {
                use std::sync::atomic::Ordering::Relaxed;
                self.0.counters.two_pc_commits.fetch_add(1, Relaxed);
                response.commit_version = req.commit_version;
            }
            Err(error) => response.error = Some(error),
        }
        Ok(Response::new(response))
    }

    async fn kv_batch_rollback(
        &self,
        request: Request<kvrpcpb::BatchRollbackRequest>,
    ) -> Result<Response<kvrpcpb::BatchRollbackResponse>, Status> {
        self.0.check_running()?;
        let req = request.into_inner();
        region_or_return!(
            self,
            req.context.as_ref(),
            req.keys.iter().map(Vec::as_slice),
            kvrpcpb::BatchRollbackResponse
        );
        {
            use std::sync::atomic::Ordering::Relaxed;
            self.0.counters.rollbacks.fetch_add(1, Relaxed);
        }
        let error = self.mvcc().rollback(&req.keys, req.start_version).err();
        Ok(Response::new(kvrpcpb::BatchRollbackResponse {
            error,
            ..Default::default()
        }))
    }

    async fn kv_check_txn_status(
        &self,
        request: Request<kvrpcpb::CheckTxnStatusRequest>,
    ) -> Result<Response<kvrpcpb::CheckTxnStatusResponse>, Status> {
        self.0.check_running()?;
        let req = request.into_inner();
        region_or_return!(
            self,
            req.context.as_ref(),
            [req.primary_key.as_slice()],
            kvrpcpb::CheckTxnStatusResponse
        );
        {
            use std::sync::atomic::Ordering::Relaxed;
            self.0.counters.check_txn_status.fetch_add(1, Relaxed);
        }
        let result = self.mvcc().check_txn_status(
            &req.primary_key,
            req.lock_ts,
            req.current_ts,
            req.rollback_if_not_exist,
        );
        let response = match result {
            Ok((lock_ttl, commit_version, action, lock_info)) => kvrpcpb::CheckTxnStatusResponse {
                lock_ttl,
                commit_version,
                action: action as i32,
                lock_info,
                ..Default::default()
            },
            Err(error) => kvrpcpb::CheckTxnStatusResponse {
                error: Some(error),
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }

    async fn kv_resolve_lock(
        &self,
        request: Request<kvrpcpb::ResolveLockRequest>,
    ) -> Result<Response<kvrpcpb::ResolveLockResponse>, Status> {
        self.0.check_running()?;
        let req = request.into_inner();
        let region = region_or_return!(
            self,
            req.context.as_ref(),
            req.keys.iter().map(Vec::as_slice),
            kvrpcpb::ResolveLockResponse
        );
        {
            use std::sync::atomic::Ordering::Relaxed;
            self.0.counters.resolve_lock.fetch_add(1, Relaxed);
        }
        let txns = if req.txn_infos.is_empty() {
            vec![TxnInfo {
                txn: req.start_version,
                status: req.commit_version,
                ..Default::default()
            }]
        } else {
            req.txn_infos
        };
        self.mvcc()
            .resolve(&txns, &req.keys, &region.start, &region.end);
        Ok(Response::new(kvrpcpb::ResolveLockResponse::default()))
    }

    async fn kv_txn_heart_beat(
        &self,
        request: Request<kvrpcpb::TxnHeartBeatRequest>,
    ) -> Result<Response<kvrpcpb::TxnHeartBeatResponse>, Status> {
        self.0.check_running()?;
        let req = request.into_inner();
        region_or_return!(
            self,
            req.context.as_ref(),
            [req.primary_lock.as_slice()],
            kvrpcpb::TxnHeartBeatResponse
        );
        let result =
            self.mvcc()
                .heart_beat(&req.primary_lock, req.start_version, req.advise_lock_ttl);
        let response = match result {
            Ok(lock_ttl) => kvrpcpb::TxnHeartBeatResponse {
                lock_ttl,
                ..Default::default()
            },
            Err(error) => kvrpcpb::TxnHeartBeatResponse {
                error: Some(error),
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }
}
