//! Event contracts: what a publisher promises and a consumer relies on.
//!
//! An [`Event`] is an immutable fact with a stable name and version. The routing key is derived
//! from both (`course.enrolled` for version 1, `course.enrolled.v2` for version 2), so a breaking
//! change gets a new key and both versions can be published while consumers migrate.

use serde::{de::DeserializeOwned, Serialize};

/// Static facts about an event type, used for topology, docs and the event catalog.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventDescriptor {
    /// The event name, e.g. `course.enrolled`.
    pub name: &'static str,
    /// The contract version, starting at 1.
    pub version: u32,
    /// The routing key on the topic exchange.
    pub routing_key: &'static str,
    /// The Rust type name.
    pub type_name: &'static str,
    /// The service that publishes it, if declared.
    pub publisher: Option<&'static str>,
    /// The services that consume it, if declared.
    pub consumers: &'static [&'static str],
    /// The type's doc comment.
    pub description: &'static str,
}

/// A typed event contract. Derive it with `#[derive(Event)]`:
///
/// ```
/// use herald::Event;
/// use serde::{Deserialize, Serialize};
///
/// /// A learner enrolled in a course.
/// #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// #[event(name = "course.enrolled", version = 2, publisher = "course-service",
///         consumers = ["notification-service", "analytics-service"])]
/// struct CourseEnrolled {
///     enrollment_id: u64,
///     course_title: String,
/// }
///
/// assert_eq!(CourseEnrolled::ROUTING_KEY, "course.enrolled.v2");
/// assert_eq!(CourseEnrolled::descriptor().consumers.len(), 2);
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The event name, `<domain>.<action>`.
    const NAME: &'static str;
    /// The contract version.
    const VERSION: u32;
    /// The routing key: the name, with `.v<N>` appended for versions above 1.
    const ROUTING_KEY: &'static str;
    /// The exchange this event is published to, when not the bus's own
    /// (`#[event(exchange = "benalsam.system")]`). The bus declares it before the first publish.
    const EXCHANGE: Option<&'static str> = None;

    /// Static facts about this event.
    fn descriptor() -> EventDescriptor;

    /// The event's JSON Schema, when it derives `schemars::JsonSchema` and opts in with
    /// `#[event(schema)]`.
    fn event_schema() -> Option<serde_json::Value> {
        None
    }
}

impl std::fmt::Display for EventDescriptor {
    /// The contract's documentation block, as reference 004 asks every event to carry:
    /// what it is, who publishes it, who consumes it, and its routing key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} v{} ({})", self.name, self.version, self.type_name)?;
        for line in self.description.lines().filter(|l| !l.trim().is_empty()) {
            writeln!(f, "  {line}")?;
        }
        writeln!(
            f,
            "  Published by: {}",
            self.publisher.unwrap_or("(not declared)")
        )?;
        let consumers = if self.consumers.is_empty() {
            "(not declared)".to_string()
        } else {
            self.consumers.join(", ")
        };
        writeln!(f, "  Consumed by:  {consumers}")?;
        writeln!(f, "  Routing key:  {}", self.routing_key)
    }
}

/// The routing key for a name and version: the name itself for version 1, `name.vN` above.
pub fn routing_key_for(name: &str, version: u32) -> String {
    if version <= 1 {
        name.to_string()
    } else {
        format!("{name}.v{version}")
    }
}

/// A payload type for consuming messages that are not Herald events: foreign JSON published by
/// other clients, received through a routing-key pattern. Use it with
/// [`Bus::subscribe_pattern`](crate::Bus::subscribe_pattern).
pub trait Payload: DeserializeOwned + Send + 'static {}
impl<T: DeserializeOwned + Send + 'static> Payload for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_documents_the_contract() {
        let d = EventDescriptor {
            name: "resource.accessed",
            version: 2,
            routing_key: "resource.accessed.v2",
            type_name: "ResourceAccessed",
            publisher: Some("gateway"),
            consumers: &["audit", "billing"],
            description: "A resource was read.",
        };
        let text = d.to_string();
        assert!(text.contains("Published by: gateway"), "{text}");
        assert!(text.contains("Consumed by:  audit, billing"), "{text}");
        assert!(
            text.contains("Routing key:  resource.accessed.v2"),
            "{text}"
        );
    }

    #[test]
    fn version_one_keeps_the_plain_name() {
        assert_eq!(routing_key_for("course.enrolled", 1), "course.enrolled");
        assert_eq!(routing_key_for("course.enrolled", 2), "course.enrolled.v2");
    }
}
