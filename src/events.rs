//! What the engine tells the JS side: member changes, readiness, log lines and failures.
//! Delivered as JSON through one callback (a weak threadsafe function in the napi layer).

use std::sync::Arc;

use serde_json::{json, Value};

use crate::membership::Change;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Member {
        change: Change,
        node: Value,
    },
    /// Joined and finished the initial state transfer, or found no one.
    Ready,
    Log {
        level: Level,
        message: String,
    },
    /// A failure the app must know about; the engine goes on where it can.
    Error {
        code: &'static str,
        message: String,
    },
    /// `waitForAck`: every local write up to number `through` is settled (see ack_wait.rs).
    Acked {
        through: u64,
    },
}

impl Event {
    pub fn to_json(&self) -> String {
        let value = match self {
            Event::Member { change, node } => json!({ "event": "member", "type": change.name(), "node": node }),
            Event::Ready => json!({ "event": "ready" }),
            Event::Log { level, message } => {
                let level = match level {
                    Level::Debug => "debug",
                    Level::Info => "info",
                    Level::Warn => "warn",
                    Level::Error => "error",
                };
                json!({ "event": "log", "level": level, "message": message })
            }
            Event::Error { code, message } => json!({ "event": "error", "code": code, "message": message }),
            Event::Acked { through } => json!({ "event": "acked", "through": through }),
        };
        value.to_string()
    }
}

pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// A sink that drops everything (engine tests, or a store nobody listens to).
pub fn discard() -> EventSink {
    Arc::new(|_| {})
}
