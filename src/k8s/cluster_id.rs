//! The installation's cluster ID when none is given: the UID of the
//! kube-system namespace, made once when the Kubernetes cluster was created
//! and never reused, so two clusters given the same LUN tell each other
//! apart with no setting at all (`disk::ownership`).

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};

/// The namespace every Kubernetes cluster has from its start.
const NAMESPACE: &str = "kube-system";

pub async fn cluster_uid(client: Client) -> anyhow::Result<String> {
    let ns = Api::<Namespace>::all(client)
        .get(NAMESPACE)
        .await
        .map_err(|e| anyhow::anyhow!("reading namespace {NAMESPACE}: {e}"))?;
    ns.metadata
        .uid
        .filter(|u| !u.is_empty())
        .ok_or_else(|| anyhow::anyhow!("namespace {NAMESPACE} has no UID"))
}
