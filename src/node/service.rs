//! The Node gRPC service: thin glue over [`NodeVolumes`].

use super::error::status;
use super::volumes::{NodeVolumes, PublishRequest, StageRequest};
use crate::csi::node_server::Node;
use crate::csi::node_service_capability::{rpc, Rpc, Type as CapType};
use crate::csi::*;
use crate::server::{detached, record_volume};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Volume partitions a LUN can hold (numbers 2..=255; 1 is the heartbeat).
const VOLUMES_PER_LUN: i64 = 254;

pub struct NodeService {
    volumes: Arc<NodeVolumes>,
}

impl NodeService {
    pub fn new(volumes: Arc<NodeVolumes>) -> Self {
        NodeService { volumes }
    }
}

fn capability(kind: rpc::Type) -> NodeServiceCapability {
    NodeServiceCapability {
        r#type: Some(CapType::Rpc(Rpc {
            r#type: kind as i32,
        })),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let r = request.into_inner();
        record_volume(&r.volume_id);
        let volumes = self.volumes.clone();
        // Mounting runs to its end even if kubelet gives up waiting.
        detached(async move {
            volumes
                .stage(StageRequest {
                    volume_id: &r.volume_id,
                    staging_path: &r.staging_target_path,
                    capability: r.volume_capability.as_ref(),
                    context: &r.volume_context,
                })
                .await
                .map_err(status)
        })
        .await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let r = request.into_inner();
        record_volume(&r.volume_id);
        let volumes = self.volumes.clone();
        detached(async move {
            volumes
                .unstage(&r.volume_id, &r.staging_target_path)
                .await
                .map_err(status)
        })
        .await?;
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let r = request.into_inner();
        record_volume(&r.volume_id);
        self.volumes
            .publish(PublishRequest {
                volume_id: &r.volume_id,
                staging_path: &r.staging_target_path,
                target_path: &r.target_path,
                capability: r.volume_capability.as_ref(),
                read_only: r.readonly,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let r = request.into_inner();
        record_volume(&r.volume_id);
        self.volumes
            .unpublish(&r.volume_id, &r.target_path)
            .await
            .map_err(status)?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let r = request.into_inner();
        record_volume(&r.volume_id);
        let s = self
            .volumes
            .stats(&r.volume_id, &r.volume_path)
            .await
            .map_err(status)?;
        let usage = |unit: volume_usage::Unit, total: u64, available: u64, used: u64| VolumeUsage {
            unit: unit as i32,
            total: total as i64,
            available: available as i64,
            used: used as i64,
        };
        let mut all = vec![usage(
            volume_usage::Unit::Bytes,
            s.total_bytes,
            s.available_bytes,
            s.used_bytes,
        )];
        // A raw block volume has a size and nothing else to count.
        if !s.block {
            all.push(usage(
                volume_usage::Unit::Inodes,
                s.total_inodes,
                s.free_inodes,
                s.used_inodes,
            ));
        }
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage: all,
            volume_condition: Some(VolumeCondition {
                abnormal: s.abnormal.is_some(),
                message: s.abnormal.unwrap_or_else(|| "healthy".into()),
            }),
        }))
    }

    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let r = request.into_inner();
        record_volume(&r.volume_id);
        let volumes = self.volumes.clone();
        let bytes = detached(async move {
            volumes
                .expand(
                    &r.volume_id,
                    &r.volume_path,
                    r.volume_capability.as_ref(),
                    r.capacity_range.as_ref(),
                )
                .await
                .map_err(status)
        })
        .await?;
        Ok(Response::new(NodeExpandVolumeResponse {
            capacity_bytes: bytes as i64,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![
                capability(rpc::Type::StageUnstageVolume),
                capability(rpc::Type::GetVolumeStats),
                capability(rpc::Type::ExpandVolume),
                capability(rpc::Type::VolumeCondition),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        let cfg = self.volumes.config();
        Ok(Response::new(NodeGetInfoResponse {
            node_id: cfg.node_id.clone(),
            // Every volume is a partition of one of our LUNs.
            max_volumes_per_node: VOLUMES_PER_LUN * cfg.luns.len() as i64,
            accessible_topology: None,
        }))
    }
}
