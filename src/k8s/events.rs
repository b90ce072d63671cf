//! Kubernetes Events for what a user waits on or must act on, where the
//! CSI sidecars cannot post them: a grow that waits for named nodes (on the
//! claim; the kubelet tells only the pod), and a LUN the controller refuses
//! (on the controller's pod: no claim is involved). A delete refused and a
//! LUN full reach the PV and the claim through the provisioner, which posts
//! the driver's error message (VolumeFailedDelete, ProvisioningFailed).
//!
//! Posting is best effort and never delays the call that has news: it runs
//! in its own task, and a failure is logged. The same news on the same
//! object is posted again only after [`REPEAT_AFTER`] (the kubelet and the
//! controller retry every few seconds to minutes).

use crate::cluster::{Member, MembershipSource};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, PersistentVolume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const REPEAT_AFTER: Duration = Duration::from_secs(600);

/// Why an event is posted (its `reason`, CamelCase as Kubernetes' own).
pub const GROW_WAITING: &str = "GrowWaitingForNodes";
pub const LUN_REFUSED: &str = "LUNRefused";

/// Posts Events as one component (`ocfs2-csi-node`, `ocfs2-csi-controller`)
/// on one host.
pub struct Recorder {
    client: Client,
    component: &'static str,
    host: String,
    recent: Mutex<HashMap<Posted, (String, Instant)>>,
}

/// (object UID, reason): what a message was last posted about.
type Posted = (String, &'static str);

impl Recorder {
    pub fn new(client: Client, component: &'static str, host: &str) -> Recorder {
        Recorder {
            client,
            component,
            host: host.to_string(),
            recent: Mutex::default(),
        }
    }

    /// Whether `message` for `reason` on `uid` is news: not posted within
    /// [`REPEAT_AFTER`]. Marks it posted.
    fn is_news(&self, uid: &str, reason: &'static str, message: &str) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let key = (uid.to_string(), reason);
        let news = !matches!(recent.get(&key),
            Some((last, at)) if last == message && at.elapsed() < REPEAT_AFTER);
        if news {
            recent.insert(key, (message.to_string(), Instant::now()));
        }
        news
    }

    /// Posts a Warning `reason`: `message` on `object`, unless it is no news.
    pub async fn warn(
        &self,
        object: &ObjectReference,
        reason: &'static str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let uid = object.uid.clone().unwrap_or_default();
        if !self.is_news(&uid, reason, message) {
            return Ok(());
        }
        let namespace = object.namespace.clone().unwrap_or_else(|| "default".into());
        let event = event(object, reason, message, self.component, &self.host);
        let posted = Api::<Event>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &event)
            .await;
        if posted.is_err() {
            // Not posted: the next try is news again.
            self.recent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(uid, reason));
        }
        posted.map(|_| ())
    }
}

/// A core/v1 Event (what `kubectl describe` shows) of a Warning.
pub fn event(
    object: &ObjectReference,
    reason: &str,
    message: &str,
    component: &str,
    host: &str,
) -> Event {
    let now = Timestamp::now();
    let name = object.name.clone().unwrap_or_default();
    Event {
        metadata: ObjectMeta {
            // The API server makes the name unique.
            generate_name: Some(format!("{name}.")),
            namespace: object.namespace.clone(),
            ..Default::default()
        },
        involved_object: object.clone(),
        reason: Some(reason.to_string()),
        // Events cap messages at 1 KiB.
        message: Some(message.chars().take(1000).collect()),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some(component.to_string()),
            host: Some(host.to_string()),
        }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        action: Some(reason.to_string()),
        reporting_component: Some(format!("ocfs2.csi.dev/{component}")),
        reporting_instance: Some(host.to_string()),
        ..Default::default()
    }
}

/// The object a user looks at for a volume: its claim, else its PV.
pub fn volume_object(pv: &PersistentVolume) -> ObjectReference {
    match pv.spec.as_ref().and_then(|s| s.claim_ref.clone()) {
        Some(claim) => ObjectReference {
            kind: Some("PersistentVolumeClaim".into()),
            api_version: Some("v1".into()),
            ..claim
        },
        None => ObjectReference {
            kind: Some("PersistentVolume".into()),
            api_version: Some("v1".into()),
            name: pv.metadata.name.clone(),
            uid: pv.metadata.uid.clone(),
            ..Default::default()
        },
    }
}

/// The message of a grow that waits: each node by name where the members
/// know it, with what it reported.
pub fn grow_waiting_message(size: u64, waiting: &[(u32, String)], members: &[Member]) -> String {
    let nodes: Vec<String> = waiting
        .iter()
        .map(
            |(number, why)| match members.iter().find(|m| u32::from(m.number) == *number) {
                Some(m) => format!("{} (o2cb node {number}) {why}", m.name),
                None => format!("o2cb node {number} {why}"),
            },
        )
        .collect();
    format!(
        "the filesystem grows to {size} bytes once every node that mounts it sees the new size; \
         waiting for {}. The kubelet retries; a node whose plugin is down answers once it is back",
        nodes.join("; ")
    )
}

/// What the node plugin tells about its volumes.
pub trait VolumeEvents: Send + Sync {
    /// A grow of the volume `handle` to `size` bytes waits for these o2cb
    /// nodes (number, what it reported). Returns at once.
    fn grow_waiting(&self, handle: &str, size: u64, waiting: Vec<(u32, String)>);
}

/// Volume events on the claims of this driver's PVs, naming nodes through
/// the membership.
pub struct KubeVolumeEvents {
    recorder: Arc<Recorder>,
    members: Arc<dyn MembershipSource>,
    driver: String,
    /// Volume handle -> the object its events go on (a PV's handle and
    /// claim never change), so a grow that waits lists the PVs once.
    objects: Mutex<HashMap<String, ObjectReference>>,
}

impl KubeVolumeEvents {
    pub fn new(
        recorder: Arc<Recorder>,
        members: Arc<dyn MembershipSource>,
        driver: &str,
    ) -> KubeVolumeEvents {
        KubeVolumeEvents {
            recorder,
            members,
            driver: driver.to_string(),
            objects: Mutex::default(),
        }
    }

    async fn object_of(&self, handle: &str) -> Result<ObjectReference, String> {
        let known = self
            .objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(handle)
            .cloned();
        if let Some(object) = known {
            return Ok(object);
        }
        let pvs = Api::<PersistentVolume>::all(self.recorder.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing PersistentVolumes: {e}"))?;
        let object = pvs
            .items
            .iter()
            .find(|pv| {
                pv.spec
                    .as_ref()
                    .and_then(|s| s.csi.as_ref())
                    .is_some_and(|c| c.driver == self.driver && c.volume_handle == handle)
            })
            .map(volume_object)
            .ok_or_else(|| format!("no PersistentVolume of {} has handle {handle}", self.driver))?;
        self.objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(handle.to_string(), object.clone());
        Ok(object)
    }

    async fn post_grow_waiting(
        &self,
        handle: &str,
        size: u64,
        waiting: &[(u32, String)],
    ) -> Result<(), String> {
        let object = self.object_of(handle).await?;
        let members = self.members.members().await.unwrap_or_default();
        let message = grow_waiting_message(size, waiting, &members);
        self.recorder
            .warn(&object, GROW_WAITING, &message)
            .await
            .map_err(|e| format!("posting the event: {e}"))
    }
}

impl VolumeEvents for Arc<KubeVolumeEvents> {
    fn grow_waiting(&self, handle: &str, size: u64, waiting: Vec<(u32, String)>) {
        let (me, handle) = (self.clone(), handle.to_string());
        tokio::spawn(async move {
            if let Err(e) = me.post_grow_waiting(&handle, size, &waiting).await {
                tracing::warn!(volume = %handle, error = %e, "no event for the grow that waits");
            }
        });
    }
}

/// The controller's events on its own pod (`POD_NAME`, `POD_NAMESPACE`,
/// `POD_UID` from the downward API).
pub struct PodEvents {
    pub recorder: Arc<Recorder>,
    pub pod: ObjectReference,
}

impl PodEvents {
    /// A LUN refused for a reason an operator must act on. Returns at once.
    pub fn lun_refused(self: &Arc<Self>, message: String) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.recorder.warn(&me.pod, LUN_REFUSED, &message).await {
                tracing::warn!(error = %e, "no event for the refused LUN");
            }
        });
    }
}

/// This pod, from the downward API's environment, when it has all three.
pub fn own_pod() -> Option<ObjectReference> {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    Some(ObjectReference {
        kind: Some("Pod".into()),
        api_version: Some("v1".into()),
        name: Some(var("POD_NAME")?),
        namespace: Some(var("POD_NAMESPACE")?),
        uid: Some(var("POD_UID")?),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PersistentVolumeSpec;

    fn member(name: &str, number: u8) -> Member {
        Member {
            name: name.into(),
            number,
            address: [10, 0, 0, number].into(),
            port: 7777,
        }
    }

    #[test]
    fn the_grow_message_names_each_node_it_waits_for() {
        let message = grow_waiting_message(
            2 << 30,
            &[
                (1, "sees 1073741824 bytes, needs 2147483648".into()),
                (7, "did not answer: timed out".into()),
            ],
            &[member("worker-a", 0), member("worker-b", 1)],
        );
        assert!(
            message.contains("grows to 2147483648 bytes")
                && message
                    .contains("worker-b (o2cb node 1) sees 1073741824 bytes, needs 2147483648")
                && message.contains("o2cb node 7 did not answer"),
            "{message}"
        );
    }

    #[test]
    fn a_volume_event_goes_on_its_claim_else_its_pv() {
        let mut pv = PersistentVolume {
            metadata: ObjectMeta {
                name: Some("pvc-1".into()),
                uid: Some("pv-uid".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec::default()),
            ..Default::default()
        };
        let on_pv = volume_object(&pv);
        assert_eq!(on_pv.kind.as_deref(), Some("PersistentVolume"));
        assert_eq!(on_pv.uid.as_deref(), Some("pv-uid"));
        pv.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            name: Some("data".into()),
            namespace: Some("apps".into()),
            uid: Some("pvc-uid".into()),
            ..Default::default()
        });
        let on_claim = volume_object(&pv);
        assert_eq!(on_claim.kind.as_deref(), Some("PersistentVolumeClaim"));
        assert_eq!(
            (on_claim.namespace.as_deref(), on_claim.uid.as_deref()),
            (Some("apps"), Some("pvc-uid"))
        );
        let e = event(
            &on_claim,
            GROW_WAITING,
            &"x".repeat(5000),
            "ocfs2-csi-node",
            "n1",
        );
        assert_eq!(e.metadata.namespace.as_deref(), Some("apps"));
        assert_eq!(e.metadata.generate_name.as_deref(), Some("data."));
        assert_eq!(e.message.unwrap().len(), 1000);
        assert_eq!(e.type_.as_deref(), Some("Warning"));
    }
}
