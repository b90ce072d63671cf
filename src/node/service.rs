//! The Node gRPC service, as far as the driver core goes (see `node`).

use super::mounts::is_mount_point;
use crate::csi::node_server::Node;
use crate::csi::*;
use crate::server::record_volume;
use std::path::Path;
use tonic::{Request, Response, Status};

pub struct NodeService {
    node_id: String,
}

impl NodeService {
    pub fn new(node_id: String) -> Self {
        NodeService { node_id }
    }
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not implemented yet: this node plugin does not join the o2cb cluster or \
         mount volumes"
    ))
}

/// Undoing a mount that is not there is done; one that is there needs the
/// node plugin's unmount logic, which does not exist yet.
fn nothing_mounted(volume_id: &str, path: &str, what: &str) -> Result<(), Status> {
    if volume_id.is_empty() {
        return Err(Status::invalid_argument("volume_id must not be empty"));
    }
    if path.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{what} must not be empty"
        )));
    }
    match is_mount_point(Path::new(path)) {
        Ok(false) => Ok(()),
        Ok(true) => Err(Status::failed_precondition(format!(
            "{path} is a mount point; unmounting volumes is not implemented yet"
        ))),
        Err(e) => Err(Status::internal(format!(
            "cannot read the mount table: {e}"
        ))),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        _request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        Err(not_yet("NodeStageVolume"))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let r = request.into_inner();
        record_volume(&r.volume_id);
        nothing_mounted(&r.volume_id, &r.staging_target_path, "staging_target_path")?;
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        _request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        Err(not_yet("NodePublishVolume"))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let r = request.into_inner();
        record_volume(&r.volume_id);
        nothing_mounted(&r.volume_id, &r.target_path, "target_path")?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        _request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        Err(not_yet("NodeGetVolumeStats"))
    }

    async fn node_expand_volume(
        &self,
        _request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        Err(not_yet("NodeExpandVolume"))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        // Nothing optional is implemented yet, so nothing is advertised.
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            // 0: no limit is claimed until the node plugin can stage volumes.
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}
