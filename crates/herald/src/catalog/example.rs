//! Example bodies generated from a JSON Schema, for events nobody registered an example for.

use serde_json::{json, Map, Value};

/// Deeper than this (a recursive type) the example stops with `null`.
const MAX_DEPTH: usize = 12;

/// A plausible value for `schema` (draft-07, as schemars 0.8 writes it): the schema's own
/// `examples`/`default`/`const`/first `enum` value when it has one, else strings `"string"`
/// (or a value in the declared `format`: RFC 3339 date-times, dates, e-mails, UUIDs, URIs),
/// integers 1 (or the `minimum`), numbers 1.5, booleans `true`, every property of an object and
/// one item of an array. `$ref`s into `definitions`/`$defs` are followed.
///
/// ```
/// use serde_json::json;
/// let schema = json!({
///     "type": "object",
///     "properties": {
///         "id": {"type": "integer", "format": "uint64", "minimum": 0},
///         "at": {"type": "string", "format": "date-time"},
///         "tags": {"type": "array", "items": {"type": "string"}}
///     }
/// });
/// assert_eq!(
///     herald::catalog::example_from_schema(&schema),
///     json!({"id": 1, "at": "2024-01-15T10:35:00Z", "tags": ["string"]})
/// );
/// ```
pub fn example_from_schema(schema: &Value) -> Value {
    generate(schema, schema, 0)
}

fn generate(schema: &Value, root: &Value, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    let Some(obj) = schema.as_object() else {
        // `true` accepts anything; `false` accepts nothing.
        return Value::Null;
    };
    if let Some(target) = obj.get("$ref").and_then(Value::as_str) {
        return match resolve(root, target) {
            Some(s) => generate(s, root, depth + 1),
            None => Value::Null,
        };
    }
    if let Some(v) = obj
        .get("examples")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        return v.clone();
    }
    for key in ["example", "default", "const"] {
        if let Some(v) = obj.get(key) {
            return v.clone();
        }
    }
    if let Some(v) = obj
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        return v.clone();
    }
    if let Some(all) = obj.get("allOf").and_then(Value::as_array) {
        return merge_objects(all.iter().map(|s| generate(s, root, depth + 1)));
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(variants) = obj.get(key).and_then(Value::as_array) {
            // `Option<T>` is `anyOf: [T, {type: null}]`: prefer a variant that says something.
            let chosen = variants
                .iter()
                .find(|v| !is_null_schema(v))
                .or(variants.first());
            return chosen.map_or(Value::Null, |s| generate(s, root, depth + 1));
        }
    }
    match schema_type(obj) {
        Some("object") => object(obj, root, depth),
        Some("array") => array(obj, root, depth),
        Some("string") => string(obj),
        Some("integer") => integer(obj),
        Some("number") => number(obj),
        Some("boolean") => Value::Bool(true),
        Some("null") => Value::Null,
        _ if obj.contains_key("properties") => object(obj, root, depth),
        _ => Value::Null,
    }
}

/// The schema's type; of a list like `["string", "null"]` the first that is not `null`.
fn schema_type(obj: &Map<String, Value>) -> Option<&str> {
    match obj.get("type")? {
        Value::String(t) => Some(t),
        Value::Array(types) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .or(Some("null")),
        _ => None,
    }
}

fn is_null_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
}

/// Follow a local reference such as `#/definitions/Rating` (a JSON Pointer into the root).
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    root.pointer(pointer)
}

fn object(obj: &Map<String, Value>, root: &Value, depth: usize) -> Value {
    let mut out = Map::new();
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            out.insert(name.clone(), generate(prop, root, depth + 1));
        }
    }
    Value::Object(out)
}

fn array(obj: &Map<String, Value>, root: &Value, depth: usize) -> Value {
    match obj.get("items") {
        Some(Value::Array(tuple)) => {
            Value::Array(tuple.iter().map(|s| generate(s, root, depth + 1)).collect())
        }
        Some(items) => Value::Array(vec![generate(items, root, depth + 1)]),
        None => Value::Array(Vec::new()),
    }
}

fn string(obj: &Map<String, Value>) -> Value {
    let value = match obj.get("format").and_then(Value::as_str) {
        Some("date-time") => "2024-01-15T10:35:00Z",
        Some("date") => "2024-01-15",
        Some("time") => "10:35:00Z",
        Some("email") => "user@example.com",
        Some("uuid") => "0190d6a0-5c1e-7b1a-9f3e-2a4b6c8d0e1f",
        Some("uri") | Some("url") => "https://example.com/",
        Some("hostname") => "example.com",
        Some("ipv4") => "192.0.2.1",
        Some("ipv6") => "2001:db8::1",
        _ => "string",
    };
    Value::String(value.to_string())
}

fn integer(obj: &Map<String, Value>) -> Value {
    let min = obj.get("minimum").and_then(Value::as_i64).unwrap_or(0);
    let max = obj
        .get("maximum")
        .and_then(Value::as_i64)
        .unwrap_or(i64::MAX);
    json!(1i64.clamp(min, max.max(min)))
}

fn number(obj: &Map<String, Value>) -> Value {
    let min = obj
        .get("minimum")
        .and_then(Value::as_f64)
        .unwrap_or(f64::MIN);
    let max = obj
        .get("maximum")
        .and_then(Value::as_f64)
        .unwrap_or(f64::MAX);
    json!(1.5f64.clamp(min, max.max(min)))
}

/// The union of the objects `allOf` parts produced; the last non-object if none is an object.
fn merge_objects(parts: impl Iterator<Item = Value>) -> Value {
    let mut merged = Map::new();
    let mut other = None;
    for part in parts {
        match part {
            Value::Object(m) => merged.extend(m),
            v => other = Some(v),
        }
    }
    if merged.is_empty() {
        other.unwrap_or(Value::Object(merged))
    } else {
        Value::Object(merged)
    }
}
