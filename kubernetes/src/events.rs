//! Tells users about a function Deployment WaveLink cannot use, where they look first: a Warning
//! Event on that Deployment (`kubectl describe deployment`), naming the key, value and range.

use std::collections::HashSet;

use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use parking_lot::Mutex;
use tracing::warn;

use crate::catalog::ClusterRejection;

pub const REASON_INVALID: &str = "InvalidFunction";

pub struct RejectionEvents {
    recorder: Recorder,
    /// (Deployment uid, message) pairs already reported: each problem is reported once per
    /// controller process, again only when the message changes.
    reported: Mutex<HashSet<(String, String)>>,
}

impl RejectionEvents {
    pub fn new(client: Client, instance: String) -> Self {
        let reporter = Reporter { controller: "wavelink-controller".into(), instance: Some(instance) };
        RejectionEvents { recorder: Recorder::new(client, reporter), reported: Mutex::new(HashSet::new()) }
    }

    /// Publishes an Event for every rejection not reported yet. Returns the API errors met.
    pub async fn report(&self, rejections: &[ClusterRejection]) -> Vec<kube::Error> {
        let mut errors = Vec::new();
        for r in rejections {
            let key = (r.deployment.uid.clone().unwrap_or_default(), r.rejected.error.clone());
            if self.reported.lock().contains(&key) {
                continue;
            }
            warn!(function = %r.rejected.function, error = %r.rejected.error, "function rejected");
            let event = Event {
                type_: EventType::Warning,
                reason: REASON_INVALID.into(),
                // The API caps a note at 1 kB.
                note: Some(truncate(&format!("function {} rejected: {}", r.rejected.function, r.rejected.error), 1000)),
                action: "Validate".into(),
                secondary: None,
            };
            match self.recorder.publish(&event, &r.deployment).await {
                Ok(()) => {
                    self.reported.lock().insert(key);
                }
                Err(e) => errors.push(e),
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
