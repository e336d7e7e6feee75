//! Tells users about a function Deployment WaveLink cannot use, where they look first: a Warning
//! Event on that Deployment (`kubectl describe deployment`), naming the key, value and range.

use std::collections::HashSet;

use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use parking_lot::Mutex;
use tracing::warn;

use k8s_openapi::api::core::v1::ObjectReference;

use crate::catalog::ClusterRejection;

pub const REASON_INVALID: &str = "InvalidFunction";
/// A Wavelet cannot start Emergency Instances of the function: its image is missing or broken
/// on that node.
pub const REASON_IMAGE: &str = "EmergencyImageUnavailable";

/// Warning Events on objects, each problem reported once per process (again when its message
/// changes), so a problem that lasts does not flood the object's events.
pub struct WarningEvents {
    recorder: Recorder,
    /// (object uid, message) pairs already reported.
    reported: Mutex<HashSet<(String, String)>>,
}

impl WarningEvents {
    /// Events from `component` (`wavelink-controller`, `wavelink-wavelet`), this `instance` of it.
    pub fn new(client: Client, component: &str, instance: String) -> Self {
        let reporter = Reporter { controller: component.into(), instance: Some(instance) };
        WarningEvents { recorder: Recorder::new(client, reporter), reported: Mutex::new(HashSet::new()) }
    }

    /// Publishes a Warning Event on `object` unless this note was reported for it already.
    pub async fn report(
        &self,
        object: &ObjectReference,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let key = (object.uid.clone().unwrap_or_default(), note.to_owned());
        if self.reported.lock().contains(&key) {
            return Ok(());
        }
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            // The API caps a note at 1 kB.
            note: Some(truncate(note, 1000)),
            action: action.into(),
            secondary: None,
        };
        self.recorder.publish(&event, object).await?;
        self.reported.lock().insert(key);
        Ok(())
    }
}

/// The controller's Events for function Deployments it cannot use.
pub struct RejectionEvents(WarningEvents);

impl RejectionEvents {
    pub fn new(client: Client, instance: String) -> Self {
        RejectionEvents(WarningEvents::new(client, "wavelink-controller", instance))
    }

    /// Publishes an Event for every rejection not reported yet. Returns the API errors met.
    pub async fn report(&self, rejections: &[ClusterRejection]) -> Vec<kube::Error> {
        let mut errors = Vec::new();
        for r in rejections {
            let note = format!("function {} rejected: {}", r.rejected.function, r.rejected.error);
            let key = (r.deployment.uid.clone().unwrap_or_default(), note.clone());
            if !self.0.reported.lock().contains(&key) {
                warn!(function = %r.rejected.function, error = %r.rejected.error, "function rejected");
            }
            if let Err(e) = self.0.report(&r.deployment, REASON_INVALID, "Validate", &note).await {
                errors.push(e);
            }
        }
        errors
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }
}
