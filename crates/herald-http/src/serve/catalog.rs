//! The event catalog (`docs/http-api.md`, "Event catalog JSON"), with compiled schemas for
//! validating published bodies.

use std::collections::HashMap;

use serde::Deserialize;

use crate::error::{Error, Result};

/// One consumer of an event in the catalog.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CatalogConsumer {
    pub service: String,
    pub queue: String,
}

/// The fields of a catalog entry the server uses (the JSON is served as given).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CatalogEvent {
    pub name: String,
    #[serde(default = "one")]
    pub version: u32,
    pub routing_key: String,
    #[serde(default)]
    pub consumers: Vec<CatalogConsumer>,
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
struct CatalogShape {
    #[serde(default)]
    events: Vec<CatalogEvent>,
}

/// The catalog as served, its entries, and a validator per entry with a schema.
pub(crate) struct Catalog {
    pub json: serde_json::Value,
    pub events: Vec<CatalogEvent>,
    validators: HashMap<(String, u32), jsonschema::Validator>,
}

impl Catalog {
    pub fn new(json: Option<serde_json::Value>, exchange: &str) -> Result<Self> {
        let json = json.unwrap_or_else(|| serde_json::json!({"exchange": exchange, "events": []}));
        let shape: CatalogShape =
            serde_json::from_value(json.clone()).map_err(|e| Error::Catalog(e.to_string()))?;
        let mut validators = HashMap::new();
        for e in &shape.events {
            if let Some(schema) = e.schema.as_ref().filter(|s| !s.is_null()) {
                let v = jsonschema::validator_for(schema).map_err(|err| {
                    Error::Catalog(format!(
                        "the schema of `{}` v{} is not a valid JSON Schema: {err}",
                        e.name, e.version
                    ))
                })?;
                validators.insert((e.name.clone(), e.version), v);
            }
        }
        Ok(Catalog {
            json,
            events: shape.events,
            validators,
        })
    }

    /// The entry for an event type and version.
    pub fn event(&self, name: &str, version: u32) -> Option<&CatalogEvent> {
        self.events
            .iter()
            .find(|e| e.name == name && e.version == version)
    }

    /// Schema violations of `body` as `<path>: <message>`; empty when valid or no schema is known.
    pub fn violations(&self, name: &str, version: u32, body: &serde_json::Value) -> Vec<String> {
        let Some(v) = self.validators.get(&(name.to_string(), version)) else {
            return Vec::new();
        };
        v.iter_errors(body)
            .map(|e| {
                let path = e.instance_path.to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            })
            .collect()
    }

    /// The consuming service of a queue, when the catalog names it.
    pub fn service_of(&self, queue: &str) -> Option<&str> {
        self.events
            .iter()
            .flat_map(|e| &e.consumers)
            .find(|c| c.queue == queue)
            .map(|c| c.service.as_str())
    }
}
