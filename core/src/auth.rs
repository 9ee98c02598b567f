//! The one access check every subscribe and publish passes, whatever the
//! protocol it came in on.
//!
//! Today it allows everything; it exists from the start so that identities
//! and ACLs arrive later as a change to this function, not as checks
//! sprinkled over each protocol.

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A web client that presented no credentials.
    Anonymous,
    /// A device-driver plugin, by its configured name.
    Plugin(String),
}

/// What they ask to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Subscribe,
    Publish,
}

/// A refusal, with the reason a client may be shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not allowed to {action:?} on `{topic}`: {reason}")]
pub struct Denied {
    pub action: Action,
    pub topic: String,
    pub reason: String,
}

/// Decides whether `principal` may perform `action` on `topic` (a topic name
/// for publish, a filter for subscribe).
pub fn authorize(principal: &Principal, action: Action, topic: &str) -> Result<(), Denied> {
    match principal {
        Principal::Anonymous | Principal::Plugin(_) => {
            let _ = (action, topic);
            Ok(())
        }
    }
}
