//! The PD service: cluster membership (itself), timestamps, and the fixed region layout.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming, codegen::BoxStream, service::Routes};

use crate::{
    Region, Shared,
    kvproto::{
        metapb,
        pdpb::{self, pd_server::PdServer},
    },
};

/// The PD routes of a stand-in.
pub(crate) fn router(shared: Arc<Shared>) -> Routes {
    Routes::new(PdServer::new(Pd(shared)))
}

struct Pd(Arc<Shared>);

/// Memcomparable encoding of a key, as PD stores region boundaries of transactional data
/// (groups of 8 bytes, zero-padded, each followed by `0xff - padding`).
pub(crate) fn encode_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity((key.len() / 8 + 1) * 9);
    for chunk_start in (0..=key.len()).step_by(8) {
        let chunk = &key[chunk_start..key.len().min(chunk_start + 8)];
        out.extend_from_slice(chunk);
        let pad = 8 - chunk.len();
        out.extend(std::iter::repeat_n(0u8, pad));
        out.push(0xff - pad as u8);
    }
    out
}

impl Pd {
    fn header(&self) -> Option<pdpb::ResponseHeader> {
        Some(pdpb::ResponseHeader {
            cluster_id: self.0.cluster_id,
            error: None,
        })
    }

    fn peer(&self, region: &Region) -> metapb::Peer {
        metapb::Peer {
            id: 100 + region.id,
            store_id: self.0.store_id,
            ..Default::default()
        }
    }

    /// A region as PD reports it: encoded boundaries, one voter on the one store.
    fn region_response(&self, region: Option<&Region>) -> pdpb::GetRegionResponse {
        let Some(region) = region else {
            return pdpb::GetRegionResponse {
                header: self.header(),
                ..Default::default()
            };
        };
        let encode = |k: &[u8]| {
            if k.is_empty() {
                Vec::new()
            } else {
                encode_key(k)
            }
        };
        pdpb::GetRegionResponse {
            header: self.header(),
            region: Some(metapb::Region {
                id: region.id,
                start_key: encode(&region.start),
                end_key: encode(&region.end),
                region_epoch: Some(metapb::RegionEpoch {
                    conf_ver: 1,
                    version: 1,
                }),
                peers: vec![self.peer(region)],
                ..Default::default()
            }),
            leader: Some(self.peer(region)),
            ..Default::default()
        }
    }

    fn store(&self) -> metapb::Store {
        metapb::Store {
            id: self.0.store_id,
            address: self.0.store_addr.to_string(),
            state: metapb::StoreState::Up as i32,
            version: "8.5.0".to_owned(),
            ..Default::default()
        }
    }

    fn member(&self) -> pdpb::Member {
        let url = format!("http://{}", self.0.pd_addr);
        pdpb::Member {
            name: "standin-pd".to_owned(),
            member_id: 1,
            peer_urls: vec![url.clone()],
            client_urls: vec![url],
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl pdpb::pd_server::Pd for Pd {
    async fn get_members(
        &self,
        _request: Request<pdpb::GetMembersRequest>,
    ) -> Result<Response<pdpb::GetMembersResponse>, Status> {
        self.0.check_running()?;
        Ok(Response::new(pdpb::GetMembersResponse {
            header: self.header(),
            members: vec![self.member()],
            leader: Some(self.member()),
            etcd_leader: Some(self.member()),
            ..Default::default()
        }))
    }

    async fn tso(
        &self,
        request: Request<Streaming<pdpb::TsoRequest>>,
    ) -> Result<Response<BoxStream<pdpb::TsoResponse>>, Status> {
        self.0.check_running()?;
        let mut inbound = request.into_inner();
        let shared = self.0.clone();
        let header = self.header();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut stop = shared.stop_rx.clone();
            loop {
                tokio::select! {
                    _ = async { stop.wait_for(|stopped| *stopped).await.is_ok() } => {
                        let _ = tx.send(Err(Status::unavailable("the TiKV stand-in is stopped"))).await;
                        break;
                    }
                    message = inbound.message() => {
                        let Ok(Some(request)) = message else { break };
                        let (physical, logical) = shared.allocate_ts(request.count);
                        let response = pdpb::TsoResponse {
                            header: header.clone(),
                            count: request.count,
                            timestamp: Some(pdpb::Timestamp { physical, logical, suffix_bits: 0 }),
                        };
                        if tx.send(Ok(response)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_region(
        &self,
        request: Request<pdpb::GetRegionRequest>,
    ) -> Result<Response<pdpb::GetRegionResponse>, Status> {
        self.0.check_running()?;
        let key = request.into_inner().region_key;
        // Encoded boundaries sort like the raw ones, so the encoded key is compared with them.
        let region = self.0.regions.iter().find(|r| {
            (r.start.is_empty() || key >= encode_key(&r.start))
                && (r.end.is_empty() || key < encode_key(&r.end))
        });
        Ok(Response::new(self.region_response(region)))
    }

    async fn get_region_by_id(
        &self,
        request: Request<pdpb::GetRegionByIdRequest>,
    ) -> Result<Response<pdpb::GetRegionResponse>, Status> {
        self.0.check_running()?;
        let id = request.into_inner().region_id;
        Ok(Response::new(self.region_response(self.0.region_by_id(id))))
    }

    async fn get_store(
        &self,
        request: Request<pdpb::GetStoreRequest>,
    ) -> Result<Response<pdpb::GetStoreResponse>, Status> {
        self.0.check_running()?;
        let id = request.into_inner().store_id;
        if id != self.0.store_id {
            return Ok(Response::new(pdpb::GetStoreResponse {
                header: Some(pdpb::ResponseHeader {
                    cluster_id: self.0.cluster_id,
                    error: Some(pdpb::Error {
                        message: format!("invalid store ID {id}, not found"),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }));
        }
        Ok(Response::new(pdpb::GetStoreResponse {
            header: self.header(),
            store: Some(self.store()),
            ..Default::default()
        }))
    }

    async fn get_all_stores(
        &self,
        _request: Request<pdpb::GetAllStoresRequest>,
    ) -> Result<Response<pdpb::GetAllStoresResponse>, Status> {
        self.0.check_running()?;
        Ok(Response::new(pdpb::GetAllStoresResponse {
            header: self.header(),
            stores: vec![self.store()],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::encode_key;

    #[test]
    fn encoding_pads_groups_of_eight() {
        assert_eq!(encode_key(b""), [0, 0, 0, 0, 0, 0, 0, 0, 0xf7]);
        assert_eq!(encode_key(&[0x80]), [0x80, 0, 0, 0, 0, 0, 0, 0, 0xf8]);
        let eight = encode_key(b"12345678");
        assert_eq!(eight.len(), 18);
        assert_eq!(eight[8], 0xff);
        assert!(encode_key(b"ab") < encode_key(b"abc"));
        assert!(encode_key(b"abc") < encode_key(b"abd"));
        assert!(encode_key(&[1, 0]) > encode_key(&[1]));
    }
}
