//! Schema validation: with feature `schema`, a body that fails the event's JSON Schema goes to
//! the dead letters with the validation errors, before any handler sees it. Without the feature
//! the layer is a no-op pass-through.

use std::sync::Arc;

use super::{BoxFuture, Handle, HandlerResult, Layer, Message};

/// Validates a body against the event's JSON Schema before it is decoded; one that fails goes to
/// the dead letters with the violations (kind `schema`). Needs feature `schema` (a no-op without
/// it). Usually switched on with `ConsumerOptions::validate_schema`.
#[derive(Clone)]
pub struct SchemaLayer {
    #[cfg(feature = "schema")]
    validator: Arc<jsonschema::Validator>,
}

impl std::fmt::Debug for SchemaLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchemaLayer")
    }
}

impl SchemaLayer {
    /// Validate against `schema`. Fails when the schema itself is invalid.
    #[cfg(feature = "schema")]
    pub fn new(schema: &serde_json::Value) -> crate::Result<Self> {
        let validator = jsonschema::validator_for(schema)
            .map_err(|e| crate::Error::Config(format!("invalid JSON Schema: {e}")))?;
        Ok(SchemaLayer {
            validator: Arc::new(validator),
        })
    }

    /// Without feature `schema` there is nothing to validate with.
    #[cfg(not(feature = "schema"))]
    pub fn new(_schema: &serde_json::Value) -> crate::Result<Self> {
        Err(crate::Error::Config(
            "schema validation needs herald's `schema` cargo feature".into(),
        ))
    }
}

impl Layer for SchemaLayer {
    fn layer(&self, inner: Arc<dyn Handle>) -> Arc<dyn Handle> {
        Arc::new(Validate {
            inner,
            layer: self.clone(),
        })
    }
}

struct Validate {
    inner: Arc<dyn Handle>,
    #[allow(dead_code)]
    layer: SchemaLayer,
}

impl Handle for Validate {
    fn call(&self, msg: Message) -> BoxFuture<HandlerResult> {
        #[cfg(feature = "schema")]
        {
            use super::{FailureKind, HandlerError};
            let body: serde_json::Value = match serde_json::from_slice(&msg.envelope.body) {
                Ok(v) => v,
                Err(e) => {
                    let err =
                        HandlerError::new(FailureKind::Decode, format!("body is not JSON: {e}"));
                    return Box::pin(async move { Err(err) });
                }
            };
            let errors: Vec<String> = self
                .layer
                .validator
                .iter_errors(&body)
                .map(|e| format!("{} at `{}`", e, e.instance_path))
                .collect();
            if !errors.is_empty() {
                let err = HandlerError::new(
                    FailureKind::Schema,
                    format!("schema validation failed: {}", errors.join("; ")),
                );
                return Box::pin(async move { Err(err) });
            }
        }
        self.inner.call(msg)
    }
}

#[cfg(all(test, feature = "schema"))]
mod tests {
    use super::*;
    use crate::middleware::test_support::message;
    use crate::middleware::{handle_fn, FailureKind};

    #[tokio::test]
    async fn invalid_bodies_fail_with_the_reason() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": { "n": { "type": "integer", "minimum": 5 } },
            "required": ["n"]
        });
        let h = SchemaLayer::new(&schema)
            .unwrap()
            .layer(handle_fn(|_| async { Ok(()) }));
        let err = h.call(message(1)).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::Schema);
        assert!(err.message.contains("minimum"), "{}", err.message);
    }
}
