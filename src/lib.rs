//! express-session-multicast: a session store for express-session, replicated between servers.
//!
//! The engine modules are plain Rust, tested with `cargo test --no-default-features`; the `node`
//! feature adds the thin napi surface below, driven by `index.js`.

pub mod clock;
pub mod cluster;
pub mod crypto;
pub mod doctor;
pub mod engine;
pub mod events;
pub mod fragment;
pub mod link;
pub mod membership;
pub mod metrics;
pub mod options;
pub mod reliable;
pub mod replay;
pub mod table;
pub mod transfer;
pub mod transport;
pub mod wire;

#[cfg(feature = "node")]
mod node {
    use std::sync::Arc;

    use napi::bindgen_prelude::Function;
    use napi::threadsafe_function::ThreadsafeFunctionCallMode;
    use napi::{Error, Result, Status};
    use napi_derive::napi;

    use crate::engine::{Engine, WriteError};
    use crate::events::EventSink;
    use crate::options::Config;

    /// Status codes of write calls, mirrored in index.js.
    const OK: u32 = 0;
    const SESSION_TOO_LARGE: u32 = 1;

    fn write_status(result: std::result::Result<(), WriteError>) -> u32 {
        match result {
            Ok(()) => OK,
            Err(WriteError::TooLarge) => SESSION_TOO_LARGE,
        }
    }

    fn config_from(options_json: &str) -> Result<Config> {
        let options: serde_json::Value = serde_json::from_str(options_json)
            .map_err(|e| Error::new(Status::InvalidArg, format!("express-session-multicast: options: {e}")))?;
        Config::from_json(&options).map_err(|e| Error::new(Status::InvalidArg, e.to_string()))
    }

    /// Absolute expiry from JS (`NaN` when the cookie has none).
    fn expires(ms: f64) -> Option<u64> {
        ms.is_finite().then(|| ms.max(0.0) as u64)
    }

    #[napi]
    pub struct NativeEngine {
        engine: Engine,
    }

    #[napi]
    impl NativeEngine {
        /// Validates the options (JSON) and starts the engine. Invalid options fail with status
        /// `InvalidArg`, which index.js rethrows as a TypeError. `on_event` receives every
        /// engine event as JSON; it is weak, so it never keeps Node alive.
        #[napi(constructor, catch_unwind)]
        pub fn new(options_json: String, on_event: Function<String, ()>) -> Result<Self> {
            Self::start(config_from(&options_json)?, on_event)
        }

        /// An engine that observes and probes the cluster without joining it (the doctor).
        #[napi(factory, catch_unwind)]
        pub fn observer(options_json: String, on_event: Function<String, ()>) -> Result<Self> {
            Self::start(Config { observer: true, ..config_from(&options_json)? }, on_event)
        }

        fn start(config: Config, on_event: Function<String, ()>) -> Result<Self> {
            let callback = on_event
                .build_threadsafe_function::<String>()
                .weak::<true>()
                .callee_handled::<false>()
                .build()?;
            let events: EventSink = Arc::new(move |event| {
                // Fails only while Node is shutting down, when nobody listens any more.
                let _ = callback.call(event.to_json(), ThreadsafeFunctionCallMode::NonBlocking);
            });
            let engine = Engine::start(config, events).map_err(|e| {
                Error::new(Status::GenericFailure, format!("express-session-multicast: cannot start the engine: {e}"))
            })?;
            Ok(NativeEngine { engine })
        }

        #[napi(catch_unwind)]
        pub fn config(&self) -> String {
            self.engine.config().to_json().to_string()
        }

        #[napi(catch_unwind)]
        pub fn get(&self, sid: String) -> Option<String> {
            self.engine.get(&sid).map(|doc| doc.to_string())
        }

        #[napi(catch_unwind)]
        pub fn set(&self, sid: String, json: String, expires_ms: f64) -> u32 {
            write_status(self.engine.set(&sid, json, expires(expires_ms)))
        }

        #[napi(catch_unwind)]
        pub fn touch(&self, sid: String, cookie_json: Option<String>, expires_ms: f64) -> u32 {
            write_status(self.engine.touch(&sid, cookie_json, expires(expires_ms)))
        }

        #[napi(catch_unwind)]
        pub fn destroy(&self, sid: String) {
            self.engine.destroy(&sid)
        }

        #[napi(catch_unwind)]
        pub fn clear(&self) {
            self.engine.clear()
        }

        #[napi(catch_unwind)]
        pub fn all(&self) -> String {
            self.engine.all_json()
        }

        #[napi(catch_unwind)]
        pub fn length(&self) -> u32 {
            self.engine.length() as u32
        }

        #[napi(catch_unwind)]
        pub fn stats(&self) -> String {
            self.engine.stats().to_string()
        }

        #[napi(catch_unwind)]
        pub fn metrics(&self) -> String {
            self.engine.metrics()
        }

        #[napi(catch_unwind)]
        pub fn members(&self) -> String {
            self.engine.members().to_string()
        }

        #[napi(catch_unwind)]
        pub fn probe(&self, sizes: Vec<u32>) {
            self.engine.probe(sizes)
        }

        #[napi(catch_unwind)]
        pub fn probe_report(&self) -> String {
            self.engine.probe_report().to_string()
        }

        #[napi(catch_unwind)]
        pub fn close(&self) {
            self.engine.close()
        }
    }
}
