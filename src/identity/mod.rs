//! The Identity service, served by both the controller and the node plugin.

use crate::csi::identity_server::Identity;
use crate::csi::plugin_capability::{self, service, volume_expansion};
use crate::csi::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub use crate::server::Readiness;

/// A CSI driver name: DNS-style, at most 63 characters (the CSI spec's
/// rule); the error says what is wrong.
pub fn validate_driver_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "driver name {name:?} must be a DNS-style name of at most 63 characters"
        ))
    }
}

pub struct IdentityService {
    driver_name: String,
    controller: bool,
    readiness: Arc<dyn Readiness>,
}

impl IdentityService {
    pub fn new(driver_name: String, controller: bool, readiness: Arc<dyn Readiness>) -> Self {
        IdentityService {
            driver_name,
            controller,
            readiness,
        }
    }
}

fn service(kind: service::Type) -> PluginCapability {
    PluginCapability {
        r#type: Some(plugin_capability::Type::Service(
            plugin_capability::Service {
                r#type: kind as i32,
            },
        )),
    }
}

fn expansion(kind: volume_expansion::Type) -> PluginCapability {
    PluginCapability {
        r#type: Some(plugin_capability::Type::VolumeExpansion(
            plugin_capability::VolumeExpansion {
                r#type: kind as i32,
            },
        )),
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let mut capabilities = vec![
            expansion(volume_expansion::Type::Online),
            expansion(volume_expansion::Type::Offline),
        ];
        if self.controller {
            capabilities.insert(0, service(service::Type::ControllerService));
        }
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse {
            ready: Some(self.readiness.is_ready()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::validate_driver_name;

    #[test]
    fn driver_names_are_dns_style() {
        for good in ["ocfs2.csi.dev", "a", "x-1.y"] {
            assert_eq!(validate_driver_name(good), Ok(()), "{good}");
        }
        let long = "a".repeat(64);
        for bad in ["", "-a", "a.", "a_b", "a b", long.as_str()] {
            assert!(validate_driver_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
