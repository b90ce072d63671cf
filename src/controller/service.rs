//! The Controller gRPC service: unpacks requests, calls [`Volumes`], and maps
//! each RPC's error to its status. No business logic lives here.

use super::error::{status, ExpandError};
use super::volumes::{ContentSource, CreateRequest, SnapshotInfo, VolumeInfo, Volumes};
use crate::csi::controller_server::Controller;
use crate::csi::controller_service_capability::{rpc, Rpc, Type as CapType};
use crate::csi::validate_volume_capabilities_response::Confirmed;
use crate::csi::*;
use crate::csi::{list_snapshots_response, list_volumes_response};
use crate::server::{detached, record_volume};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ControllerService {
    volumes: Arc<Volumes>,
}

impl ControllerService {
    pub fn new(volumes: Arc<Volumes>) -> Self {
        ControllerService { volumes }
    }
}

/// Capabilities we implement; nothing else is advertised.
const CAPABILITIES: [rpc::Type; 8] = [
    rpc::Type::CreateDeleteVolume,
    rpc::Type::CloneVolume,
    rpc::Type::CreateDeleteSnapshot,
    rpc::Type::ListSnapshots,
    rpc::Type::ExpandVolume,
    rpc::Type::ListVolumes,
    rpc::Type::GetCapacity,
    rpc::Type::GetVolume,
];

fn volume(info: &VolumeInfo) -> Volume {
    use crate::csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
    Volume {
        capacity_bytes: info.capacity as i64,
        volume_id: info.id.to_string(),
        volume_context: info.context.clone(),
        content_source: info.source.as_ref().map(|source| VolumeContentSource {
            r#type: Some(match source {
                ContentSource::Volume(id) => Type::Volume(VolumeSource {
                    volume_id: id.clone(),
                }),
                ContentSource::Snapshot(id) => Type::Snapshot(SnapshotSource {
                    snapshot_id: id.clone(),
                }),
            }),
        }),
        ..Default::default()
    }
}

/// A snapshot as CreateSnapshot and ListSnapshots report it: ready, since
/// CreateSnapshot returns once the copy is done.
fn snapshot(info: &SnapshotInfo) -> Snapshot {
    Snapshot {
        size_bytes: info.size as i64,
        snapshot_id: info.id.to_string(),
        source_volume_id: info.source.map(|s| s.to_string()).unwrap_or_default(),
        creation_time: info
            .created
            .map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

/// The request's content source; one that names nothing is bad input.
fn content_source(source: Option<VolumeContentSource>) -> Result<Option<ContentSource>, Status> {
    use crate::csi::volume_content_source::Type;
    let Some(source) = source else {
        return Ok(None);
    };
    match source.r#type {
        Some(Type::Volume(v)) => Ok(Some(ContentSource::Volume(v.volume_id))),
        Some(Type::Snapshot(s)) => Ok(Some(ContentSource::Snapshot(s.snapshot_id))),
        None => Err(Status::invalid_argument(
            "volume_content_source names neither a volume nor a snapshot",
        )),
    }
}

fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not supported by ocfs2-csi"))
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let mut r = request.into_inner();
        record_volume(&r.name);
        let source = content_source(r.volume_content_source.take())?;
        let volumes = self.volumes.clone();
        let info = detached(async move {
            let capacity = r.capacity_range.unwrap_or_default();
            volumes
                .create(CreateRequest {
                    name: &r.name,
                    required_bytes: capacity.required_bytes,
                    limit_bytes: capacity.limit_bytes,
                    capabilities: &r.volume_capabilities,
                    parameters: &r.parameters,
                    source,
                })
                .await
                .map_err(status)
        })
        .await?;
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(volume(&info)),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let r = request.into_inner();
        record_volume(&r.volume_id);
        let volumes = self.volumes.clone();
        detached(async move { volumes.delete(&r.volume_id).await.map_err(status) }).await?;
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        _request: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        Err(unsupported("ControllerPublishVolume"))
    }

    async fn controller_unpublish_volume(
        &self,
        _request: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        Err(unsupported("ControllerUnpublishVolume"))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let r = request.into_inner();
        record_volume(&r.volume_id);
        let verdict = self
            .volumes
            .validate(&r.volume_id, &r.volume_capabilities, &r.parameters)
            .await
            .map_err(status)?;
        let response = match verdict {
            Ok(()) => ValidateVolumeCapabilitiesResponse {
                confirmed: Some(Confirmed {
                    volume_context: r.volume_context,
                    volume_capabilities: r.volume_capabilities,
                    parameters: r.parameters,
                    mutable_parameters: Default::default(),
                }),
                message: String::new(),
            },
            Err(why) => ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: why,
            },
        };
        Ok(Response::new(response))
    }

    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let r = request.into_inner();
        let (page, next_token) = self
            .volumes
            .list(i64::from(r.max_entries), &r.starting_token)
            .await
            .map_err(status)?;
        let entries = page
            .iter()
            .map(|info| list_volumes_response::Entry {
                volume: Some(volume(info)),
                status: None,
            })
            .collect();
        Ok(Response::new(ListVolumesResponse {
            entries,
            next_token,
        }))
    }

    async fn get_capacity(
        &self,
        request: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        let r = request.into_inner();
        let cap = self
            .volumes
            .capacity(&r.parameters, &r.volume_capabilities)
            .await
            .map_err(status)?;
        Ok(Response::new(GetCapacityResponse {
            available_capacity: cap.available as i64,
            maximum_volume_size: Some(cap.maximum_volume as i64),
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        let capabilities = CAPABILITIES
            .iter()
            .map(|t| ControllerServiceCapability {
                r#type: Some(CapType::Rpc(Rpc { r#type: *t as i32 })),
            })
            .collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        let r = request.into_inner();
        record_volume(&r.source_volume_id);
        let volumes = self.volumes.clone();
        let info = detached(async move {
            volumes
                .create_snapshot(&r.name, &r.source_volume_id, &r.parameters)
                .await
                .map_err(status)
        })
        .await?;
        Ok(Response::new(CreateSnapshotResponse {
            snapshot: Some(snapshot(&info)),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        let r = request.into_inner();
        let volumes = self.volumes.clone();
        detached(async move {
            volumes
                .delete_snapshot(&r.snapshot_id)
                .await
                .map_err(status)
        })
        .await?;
        Ok(Response::new(DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        let r = request.into_inner();
        let (page, next_token) = self
            .volumes
            .list_snapshots(
                i64::from(r.max_entries),
                &r.starting_token,
                &r.snapshot_id,
                &r.source_volume_id,
            )
            .await
            .map_err(status)?;
        let entries = page
            .iter()
            .map(|info| list_snapshots_response::Entry {
                snapshot: Some(snapshot(info)),
            })
            .collect();
        Ok(Response::new(ListSnapshotsResponse {
            entries,
            next_token,
        }))
    }

    async fn get_snapshot(
        &self,
        _request: Request<GetSnapshotRequest>,
    ) -> Result<Response<GetSnapshotResponse>, Status> {
        Err(unsupported("GetSnapshot"))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let r = request.into_inner();
        record_volume(&r.volume_id);
        // REQUIRED by the spec: without it there is no size to grow to.
        let Some(range) = r.capacity_range else {
            return Err(status(ExpandError::InvalidArgument(
                "capacity_range is required".into(),
            )));
        };
        let volumes = self.volumes.clone();
        let capacity = detached(async move {
            volumes
                .expand(
                    &r.volume_id,
                    range.required_bytes,
                    range.limit_bytes,
                    r.volume_capability.as_ref(),
                )
                .await
                .map_err(status)
        })
        .await?;
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: capacity as i64,
            // The partition grew; each node must see it before the
            // filesystem is grown there.
            node_expansion_required: true,
        }))
    }

    async fn controller_get_volume(
        &self,
        request: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        let r = request.into_inner();
        record_volume(&r.volume_id);
        let info = self.volumes.get(&r.volume_id).await.map_err(status)?;
        Ok(Response::new(ControllerGetVolumeResponse {
            volume: Some(volume(&info)),
            status: Some(controller_get_volume_response::VolumeStatus::default()),
        }))
    }

    async fn controller_modify_volume(
        &self,
        _request: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        Err(unsupported("ControllerModifyVolume"))
    }
}
