//! Data converters: user scripts (Rhai, in the style of ThingsBoard's TBEL) that turn a vendor
//! payload into devices' telemetry and attributes (uplink), or a message into a device's
//! command (downlink).
//!
//! [`ConverterRuntime`] holds one configured engine (limits, the TBEL helper library) and a
//! cache of compiled scripts keyed by their text, so a changed converter is compiled once on
//! its first message and an unchanged one never again. Each run is limited in operations,
//! string, array and map sizes, call depth and wall time; breaking a limit or raising an error
//! fails that message only. Helpers check those limits before they allocate and look at the
//! deadline while they work ([`guard`]), and the few functions of Rhai's standard library that
//! did neither are replaced ([`builtins`]).

mod builtins;
pub mod guard;
pub mod helpers;
mod output;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rhai::{AST, Blob, Dynamic, Engine, EvalAltResult, Map, OptimizationLevel, Scope};
use thiserror::Error;

pub use output::{Downlink, DownlinkContent, Entity, TelemetryRecord, UplinkRecord};

/// What one run of a script may use.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_operations: u64,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    pub max_call_levels: usize,
    pub max_wall_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 1_000_000,
            max_string_size: 1024 * 1024,
            max_array_size: 100_000,
            max_map_size: 10_000,
            max_call_levels: 32,
            max_wall_time: Duration::from_millis(500),
        }
    }
}

/// A converter failure, with where in the script it happened when known.
#[derive(Clone, Debug, Error, PartialEq)]
#[error("{message}{}", position.map(|(l, c)| format!(" (line {l}, column {c})")).unwrap_or_default())]
pub struct ConvertError {
    pub message: String,
    /// Line and column, both from 1.
    pub position: Option<(usize, usize)>,
}

impl ConvertError {
    pub fn new(message: impl Into<String>) -> ConvertError {
        ConvertError {
            message: message.into(),
            position: None,
        }
    }

    fn from_eval(mut e: EvalAltResult) -> ConvertError {
        let position = e.position();
        // The position is reported once, in `position`, not again in the text.
        e.clear_position();
        let message = match &e {
            EvalAltResult::ErrorRuntime(value, _) => value.to_string(),
            EvalAltResult::ErrorTerminated(..) => "the script ran past its time limit".into(),
            EvalAltResult::ErrorTooManyOperations(_) => {
                "the script ran past its operations limit".into()
            }
            other => other.to_string(),
        };
        ConvertError {
            message,
            position: position
                .line()
                .map(|l| (l, position.position().unwrap_or(0))),
        }
    }
}

/// The engine and the compiled-script cache. Share one per process.
pub struct ConverterRuntime {
    engine: Engine,
    cache: Mutex<HashMap<Arc<str>, Arc<AST>>>,
    max_wall_time: Duration,
}

/// Scripts cached at most; past it the cache starts over (converters are few; this only stops
/// a stream of distinct test scripts from growing it without bound).
const CACHE_LIMIT: usize = 1024;

impl ConverterRuntime {
    pub fn new(limits: &Limits) -> ConverterRuntime {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_expr_depths(64, 32)
            .set_optimization_level(OptimizationLevel::Full);
        // The coarse clock at every operation (one operation can be a helper working on a
        // megabyte), the real one every 256 in case the clock thread is starved.
        engine.on_progress(|operations| {
            let expired = if operations % 256 == 0 {
                guard::expired()
            } else {
                guard::expired_coarse()
            };
            expired.then_some(Dynamic::UNIT)
        });
        // TBEL has no `eval`; a script compiling scripts is out of reach of every check here.
        engine.disable_symbol("eval");
        engine.on_print(|_| {});
        engine.on_debug(|_, _, _| {});
        helpers::register(&mut engine);
        ConverterRuntime {
            engine,
            cache: Mutex::new(HashMap::new()),
            max_wall_time: limits.max_wall_time,
        }
    }

    /// The compiled script, from the cache when this text was compiled before.
    pub fn compile(&self, script: &str) -> Result<Arc<AST>, ConvertError> {
        if let Some(ast) = self.cache.lock().ok().and_then(|c| c.get(script).cloned()) {
            return Ok(ast);
        }
        let ast = self.engine.compile(script).map_err(|e| {
            let position = e.position();
            ConvertError {
                message: format!("syntax error: {}", e.err_type()),
                position: position
                    .line()
                    .map(|l| (l, position.position().unwrap_or(0))),
            }
        })?;
        let ast = Arc::new(ast);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(Arc::from(script), ast.clone());
        }
        Ok(ast)
    }

    fn run(&self, ast: &AST, scope: &mut Scope<'_>) -> Result<Dynamic, ConvertError> {
        let _run = guard::start(self.max_wall_time);
        self.engine
            .eval_ast_with_scope::<Dynamic>(scope, ast)
            .map_err(|e| ConvertError::from_eval(*e))
    }

    /// Runs an uplink converter: `payload` (bytes) and `metadata` in, records out.
    pub fn uplink(
        &self,
        script: &str,
        payload: &[u8],
        metadata: &BTreeMap<String, String>,
    ) -> Result<Vec<UplinkRecord>, ConvertError> {
        let ast = self.compile(script)?;
        self.uplink_compiled(&ast, payload, metadata)
    }

    /// [`uplink`](Self::uplink) with a script compiled before (what an integration holds for
    /// its converter's current version), skipping the cache look-up.
    pub fn uplink_compiled(
        &self,
        ast: &AST,
        payload: &[u8],
        metadata: &BTreeMap<String, String>,
    ) -> Result<Vec<UplinkRecord>, ConvertError> {
        let mut scope = Scope::new();
        scope.push_constant("payload", Blob::from(payload));
        scope.push_constant("metadata", string_map(metadata));
        scope.push_constant("JSON", helpers::JsonApi);
        let out = self.run(ast, &mut scope)?;
        output::uplink_records(out)
    }

    /// Runs a downlink converter.
    pub fn downlink(
        &self,
        script: &str,
        msg: Dynamic,
        msg_type: &str,
        metadata: &BTreeMap<String, String>,
        integration_metadata: &BTreeMap<String, String>,
    ) -> Result<Downlink, ConvertError> {
        let ast = self.compile(script)?;
        self.downlink_compiled(&ast, msg, msg_type, metadata, integration_metadata)
    }

    /// [`downlink`](Self::downlink) with a script compiled before.
    pub fn downlink_compiled(
        &self,
        ast: &AST,
        msg: Dynamic,
        msg_type: &str,
        metadata: &BTreeMap<String, String>,
        integration_metadata: &BTreeMap<String, String>,
    ) -> Result<Downlink, ConvertError> {
        let mut scope = Scope::new();
        scope.push_constant("msg", msg);
        scope.push_constant("msgType", msg_type.to_owned());
        scope.push_constant("metadata", string_map(metadata));
        scope.push_constant("integrationMetadata", string_map(integration_metadata));
        scope.push_constant("JSON", helpers::JsonApi);
        let out = self.run(ast, &mut scope)?;
        output::downlink(out)
    }
}

fn string_map(m: &BTreeMap<String, String>) -> Map {
    m.iter()
        .map(|(k, v)| (k.as_str().into(), Dynamic::from(v.clone())))
        .collect()
}

#[cfg(test)]
mod tests;
