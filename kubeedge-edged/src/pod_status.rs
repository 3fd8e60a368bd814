//! The pod status edged reports: phase, conditions and container statuses computed from what the
//! runtime shows, in the JSON form the kubelet's status manager patches (`podpatch`).

use serde_json::{Value, json};

use crate::runtime::{ContainerState, ContainerStatus};

/// Why a container is not running, as the kubelet words it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// `ContainerCreating`, `ErrImagePull`, `ImagePullBackOff`, `ErrImageNeverPull`,
    /// `CreateContainerConfigError`, `CreateContainerError`, `RunContainerError`,
    /// `CrashLoopBackOff`.
    pub reason: String,
    /// Details.
    pub message: String,
}

/// What edged knows about one container of the pod.
#[derive(Clone, Debug, Default)]
pub struct ContainerView {
    /// Name from the spec.
    pub name: String,
    /// Image from the spec.
    pub image: String,
    /// The latest container the runtime has for it.
    pub current: Option<ContainerStatus>,
    /// The one before (`lastState`).
    pub previous: Option<ContainerStatus>,
    /// Restarts so far.
    pub restart_count: u32,
    /// Why it is not running, when edged knows better than the runtime.
    pub waiting: Option<Waiting>,
    /// Readiness (probe, or running without a readiness probe).
    pub ready: bool,
}

/// The pod phase from its containers and restart policy (the kubelet's `getPhase`).
pub fn phase(containers: &[ContainerView], restart_policy: &str) -> &'static str {
    let (mut running, mut waiting, mut succeeded, mut failed) = (0, 0, 0, 0);
    for c in containers {
        match c.current.as_ref().map(|s| s.state) {
            Some(ContainerState::Running) => running += 1,
            Some(ContainerState::Exited) if c.waiting.is_none() => {
                if c.current.as_ref().is_some_and(|s| s.exit_code == 0) {
                    succeeded += 1;
                } else {
                    failed += 1;
                }
            }
            Some(ContainerState::Exited) if c.previous.is_some() || c.restart_count > 0 => {
                // Waiting to be restarted after it ran.
                running += 1;
            }
            _ if c.restart_count > 0 => running += 1,
            _ => waiting += 1,
        }
    }
    let total = containers.len();
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if total > 0 && succeeded == total {
        return if restart_policy == "Always" {
            "Running"
        } else {
            "Succeeded"
        };
    }
    if failed > 0 {
        return if restart_policy == "Never" {
            "Failed"
        } else {
            "Running"
        };
    }
    "Pending"
}

/// RFC 3339 (seconds) of nanoseconds since the Unix epoch.
pub fn time_of_nanos(nanos: i64) -> String {
    kubeedge_proto::rfc3339_utc(nanos / 1_000_000, false)
}

fn state_json(status: &ContainerStatus, waiting: Option<&Waiting>) -> Value {
    if let Some(w) = waiting {
        let mut v = json!({"reason": w.reason});
        if !w.message.is_empty() {
            v["message"] = json!(w.message);
        }
        return json!({"waiting": v});
    }
    match status.state {
        ContainerState::Running => {
            json!({"running": {"startedAt": time_of_nanos(status.started_at)}})
        }
        ContainerState::Exited => {
            let mut t = json!({
                "exitCode": status.exit_code,
                "reason": if status.reason.is_empty() {
                    if status.exit_code == 0 { "Completed" } else { "Error" }
                } else {
                    status.reason.as_str()
                },
                "startedAt": time_of_nanos(status.started_at),
                "finishedAt": time_of_nanos(status.finished_at),
                "containerID": format!("containerd://{}", status.id),
            });
            if !status.message.is_empty() {
                t["message"] = json!(status.message);
            }
            json!({"terminated": t})
        }
        ContainerState::Created | ContainerState::Unknown => {
            json!({"waiting": {"reason": "ContainerCreating"}})
        }
    }
}

/// One entry of `containerStatuses`.
pub fn container_status_json(c: &ContainerView) -> Value {
    let mut v = json!({
        "name": c.name,
        "image": c.image,
        "imageID": "",
        "ready": c.ready,
        "restartCount": c.restart_count,
        "started": false,
        "lastState": {},
    });
    match &c.current {
        Some(status) => {
            v["containerID"] = json!(format!("containerd://{}", status.id));
            v["imageID"] = json!(status.image_ref);
            v["started"] = json!(status.state == ContainerState::Running && c.waiting.is_none());
            v["state"] = state_json(status, c.waiting.as_ref());
        }
        None => {
            let w = c.waiting.clone().unwrap_or(Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            });
            v["state"] = json!({"waiting": {"reason": w.reason, "message": w.message}});
            if w.message.is_empty() {
                v["state"]["waiting"]
                    .as_object_mut()
                    .map(|o| o.remove("message"));
            }
        }
    }
    if let Some(prev) = &c.previous
        && prev.state == ContainerState::Exited
    {
        v["lastState"] = state_json(prev, None);
    }
    v
}

/// A condition with its last transition time kept from `before` while its status is unchanged.
pub fn condition(
    kind: &str,
    ok: bool,
    now: &str,
    before: Option<&Value>,
    reason: Option<&str>,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let since = before
        .and_then(|conds| conds.as_array())
        .and_then(|conds| conds.iter().find(|c| c["type"] == kind))
        .filter(|c| c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now)
        .to_owned();
    let mut v =
        json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    if let Some(reason) = reason.filter(|_| !ok) {
        v["reason"] = json!(reason);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: Option<ContainerState>, exit: i32, restarts: u32) -> ContainerView {
        ContainerView {
            name: "c".into(),
            image: "i".into(),
            current: state.map(|state| ContainerStatus {
                id: "id".into(),
                name: "c".into(),
                attempt: restarts,
                state,
                created_at: 0,
                started_at: 1_000_000_000,
                finished_at: 2_000_000_000,
                exit_code: exit,
                reason: String::new(),
                message: String::new(),
                image: "i".into(),
                image_ref: "sha256:x".into(),
            }),
            restart_count: restarts,
            ..ContainerView::default()
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        assert_eq!(phase(&[view(None, 0, 0)], "Always"), "Pending");
        assert_eq!(
            phase(&[view(Some(ContainerState::Running), 0, 0)], "Always"),
            "Running"
        );
        assert_eq!(
            phase(&[view(Some(ContainerState::Exited), 0, 0)], "Never"),
            "Succeeded"
        );
        assert_eq!(
            phase(&[view(Some(ContainerState::Exited), 0, 0)], "OnFailure"),
            "Succeeded"
        );
        assert_eq!(
            phase(&[view(Some(ContainerState::Exited), 1, 0)], "Never"),
            "Failed"
        );
        assert_eq!(
            phase(&[view(Some(ContainerState::Exited), 1, 0)], "OnFailure"),
            "Running"
        );
        assert_eq!(
            phase(
                &[
                    view(Some(ContainerState::Running), 0, 0),
                    view(Some(ContainerState::Exited), 0, 0)
                ],
                "Never"
            ),
            "Running"
        );
    }

    #[test]
    fn terminated_and_waiting_states_carry_reasons() {
        let mut c = view(Some(ContainerState::Exited), 3, 1);
        let v = container_status_json(&c);
        assert_eq!(v["state"]["terminated"]["exitCode"], 3);
        assert_eq!(v["state"]["terminated"]["reason"], "Error");
        assert_eq!(
            v["state"]["terminated"]["startedAt"],
            "1970-01-01T00:00:01Z"
        );
        c.waiting = Some(Waiting {
            reason: "CrashLoopBackOff".into(),
            message: "back-off 10s".into(),
        });
        let v = container_status_json(&c);
        assert_eq!(v["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(v["restartCount"], 1);
    }

    #[test]
    fn conditions_keep_their_transition_time_while_unchanged() {
        let first = condition("Ready", true, "T1", None, None);
        let before = json!([first]);
        assert_eq!(
            condition("Ready", true, "T2", Some(&before), None)["lastTransitionTime"],
            "T1"
        );
        assert_eq!(
            condition(
                "Ready",
                false,
                "T2",
                Some(&before),
                Some("ContainersNotReady")
            )["lastTransitionTime"],
            "T2"
        );
    }
}
