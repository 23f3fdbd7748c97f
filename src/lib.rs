//! express-session-multicast: a session store for express-session, replicated between servers.
//!
//! The engine modules are plain Rust, tested with `cargo test --no-default-features`; the `node`
//! feature adds the thin napi surface below, driven by `index.js`.

pub mod clock;
pub mod core;
pub mod crypto;
pub mod driver;
pub mod engine;
pub mod events;
#[cfg(feature = "node")]
mod fast_calls;
pub mod metrics;
pub mod options;
pub mod persist;
#[cfg(test)]
mod sim;
pub mod stats;
pub mod table;
pub mod wire;

#[cfg(feature = "node")]
mod node {
    use std::sync::Arc;

    use napi::bindgen_prelude::{Function, Object, ToNapiValue};
    use napi::threadsafe_function::ThreadsafeFunctionCallMode;
    use napi::{sys, Env, Error, JsDeferred, JsValue, Result, Status};
    use napi_derive::napi;

    use crate::engine::Engine;
    use crate::events::EventSink;
    use crate::fast_calls;
    use crate::options::Config;

    /// get/set/touch/destroy/flush, bound without napi-rs's per-call glue (see fast_calls.rs).
    #[napi(module_exports)]
    #[cfg_attr(test, allow(dead_code))]
    pub fn export_fast_calls(exports: Object, env: Env) -> Result<()> {
        fast_calls::register(env.raw(), exports.raw())
    }

    /// A value made with raw Node-API: the engine handle (the first argument of the fast
    /// calls), or the promise of an `ask`.
    pub struct Raw(sys::napi_value);

    impl ToNapiValue for Raw {
        unsafe fn to_napi_value(_env: sys::napi_env, raw: Self) -> Result<sys::napi_value> {
            Ok(raw.0)
        }
    }

    type Resolve = Box<dyn FnOnce(Env) -> Result<Option<String>> + Send>;

    /// Settles the promise of an `ask` exactly once: with the answer, or with null when the
    /// engine drops the query unanswered (it closed). A deferred never settled would keep Node
    /// alive for good.
    struct Settle(Option<JsDeferred<Option<String>, Resolve>>);

    impl Settle {
        fn answer(mut self, doc: Option<Arc<str>>) {
            if let Some(deferred) = self.0.take() {
                deferred.resolve(Box::new(move |_| Ok(doc.map(|doc| doc.to_string()))));
            }
        }
    }

    impl Drop for Settle {
        fn drop(&mut self) {
            if let Some(deferred) = self.0.take() {
                deferred.resolve(Box::new(|_| Ok(None)));
            }
        }
    }

    /// The declarations of every option, `stats()` figure and metric (src/options.rs, src/stats.rs,
    /// src/metrics.rs), as JSON: not part of the API, for the tests of index.d.ts and the docs
    /// (the README's options table, the stats() and metrics() tables of docs/operations.md).
    #[napi(js_name = "__declarations")]
    pub fn declarations() -> String {
        serde_json::json!({
            "options": crate::options::declarations(),
            "stats": crate::stats::declarations(),
            "memberMetrics": crate::metrics::declarations(),
        })
        .to_string()
    }

    fn config_from(options_json: &str) -> Result<Config> {
        let options: serde_json::Value = serde_json::from_str(options_json)
            .map_err(|e| Error::new(Status::InvalidArg, format!("express-session-multicast: options: {e}")))?;
        Config::from_json(&options).map_err(|e| Error::new(Status::InvalidArg, e.to_string()))
    }

    #[napi]
    pub struct NativeEngine {
        engine: Arc<Engine>,
    }

    #[napi]
    impl NativeEngine {
        /// Validates the options (JSON) and starts the engine. Invalid options fail with status
        /// `InvalidArg`, which index.js rethrows as a TypeError. `on_event` receives every
        /// engine event as JSON; it is weak, so it never keeps Node alive.
        #[napi(constructor, catch_unwind)]
        pub fn new(options_json: String, on_event: Function<String, ()>) -> Result<Self> {
            Self::start(config_from(&options_json)?, Engine::start, on_event)
        }

        /// An engine that observes and probes the cluster without joining it (the doctor).
        #[napi(factory, catch_unwind)]
        pub fn observer(options_json: String, on_event: Function<String, ()>) -> Result<Self> {
            Self::start(config_from(&options_json)?, Engine::observer, on_event)
        }

        fn start(
            config: Config,
            launch: fn(Config, EventSink) -> std::io::Result<Engine>,
            on_event: Function<String, ()>,
        ) -> Result<Self> {
            let callback =
                on_event.build_threadsafe_function::<String>().weak::<true>().callee_handled::<false>().build()?;
            let events: EventSink = Arc::new(move |event| {
                // Fails only while Node is shutting down, when nobody listens any more.
                let _ = callback.call(event.to_json(), ThreadsafeFunctionCallMode::NonBlocking);
            });
            let engine = launch(config, events).map_err(|e| {
                Error::new(Status::GenericFailure, format!("express-session-multicast: cannot start the engine: {e}"))
            })?;
            Ok(NativeEngine { engine: Arc::new(engine) })
        }

        #[napi(catch_unwind)]
        pub fn handle(&self, env: Env) -> Result<Raw> {
            fast_calls::create_handle(env.raw(), self.engine.clone()).map(Raw)
        }

        /// For a sid `get` answered undefined (nothing here, not even a tombstone): asks the
        /// alive members. A promise of the session's JSON or null once they answered (or the
        /// timeout passed); null at once when nothing is asked (over the rate limit).
        #[napi(catch_unwind)]
        pub fn ask(&self, env: Env, sid: String) -> Result<Option<Raw>> {
            let (deferred, promise) = env.create_deferred::<Option<String>, Resolve>()?;
            let settle = Settle(Some(deferred));
            if !self.engine.ask(&sid, move |doc| settle.answer(doc)) {
                return Ok(None);
            }
            Ok(Some(Raw(promise.raw())))
        }

        #[napi(catch_unwind)]
        pub fn config(&self) -> String {
            self.engine.config().to_json().to_string()
        }

        #[napi(catch_unwind)]
        /// Returns the write's ticket (0: nothing to wait for).
        pub fn clear(&self) -> f64 {
            self.engine.clear() as f64
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

        /// Leaves and stops the engine (blocks up to about 1.2 s: see `Engine::close_reporting`).
        /// Returns the warning to log when the leave timed out, else null.
        #[napi(catch_unwind)]
        pub fn close(&self) -> Option<String> {
            self.engine.close_reporting()
        }
    }
}
