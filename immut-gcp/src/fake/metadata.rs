//! Instance metadata on the wire: the `Metadata` object (`{"kind", "fingerprint", "items":
//! [{"key", "value"}]}`) that instances carry and `instances.setMetadata` replaces whole,
//! guarded by its fingerprint.

use serde_json::{Map, Value, json};

use super::error::GceError;

/// The whole metadata of an instance may hold at most this many bytes (keys and values).
const MAX_TOTAL: usize = 512 * 1024;
/// One value may hold at most this many bytes.
const MAX_VALUE: usize = 256 * 1024;

/// A `setMetadata` body: the fingerprint the caller read, and the items that replace all of
/// the instance's metadata.
#[derive(Debug, Clone)]
pub(super) struct SetMetadata {
    pub fingerprint: Option<String>,
    pub items: Vec<(String, String)>,
}

/// Parses and checks a `Metadata` request body, as the reference describes its fields.
pub(super) fn parse(body: &Map<String, Value>) -> Result<SetMetadata, GceError> {
    let fingerprint = body.get("fingerprint").and_then(Value::as_str).map(str::to_owned);
    let mut items = Vec::new();
    for (index, item) in body.get("items").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let key = item.get("key").and_then(Value::as_str).unwrap_or_default();
        let value = item.get("value").and_then(Value::as_str).unwrap_or_default();
        let field = format!("metadata.items[{index}].key");
        if !(1..=128).contains(&key.len()) || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(GceError::invalid_field(&field, key, "Must be a match of regex '[a-zA-Z0-9-_]{1,128}'"));
        }
        if items.iter().any(|(k, _)| k == key) {
            return Err(GceError::invalid_field(&field, key, "Metadata has duplicate keys."));
        }
        if value.len() > MAX_VALUE {
            return Err(GceError::invalid_field(
                &format!("metadata.items[{index}].value"),
                "…",
                "Value must be at most 262144 bytes.",
            ));
        }
        items.push((key.to_owned(), value.to_owned()));
    }
    let size: usize = items.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_TOTAL {
        return Err(GceError::bad_request("invalid", format!("Metadata of {size} bytes exceeds 512 KB")));
    }
    Ok(SetMetadata { fingerprint, items })
}

/// The fingerprint must be the one the instance has now: a stale or missing one is
/// `412 conditionNotMet`, so two writers cannot overwrite each other's items.
pub(super) fn check_fingerprint(given: Option<&str>, current: &str) -> Result<(), GceError> {
    if given == Some(current) {
        Ok(())
    } else {
        Err(GceError::condition_not_met("Supplied fingerprint does not match current metadata fingerprint."))
    }
}

/// The `Metadata` object of an instance.
pub(super) fn render(items: &[(String, String)], fingerprint: &str) -> Value {
    json!({
        "kind": "compute#metadata",
        "fingerprint": fingerprint,
        "items": items.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn items_are_checked_as_the_reference_says_and_the_fingerprint_guards_them() {
        let set =
            parse(&body(json!({"fingerprint": "abc", "items": [{"key": "ssh-keys", "value": "ops:ssh-ed25519 A"}]})))
                .unwrap();
        assert_eq!(set.fingerprint.as_deref(), Some("abc"));
        assert_eq!(set.items, vec![("ssh-keys".to_owned(), "ops:ssh-ed25519 A".to_owned())]);
        let e = parse(&body(json!({"items": [{"key": "bad key", "value": ""}]}))).unwrap_err();
        assert!(e.message.contains("metadata.items[0].key"), "{e:?}");
        let e = parse(&body(json!({"items": [{"key": "a", "value": "1"}, {"key": "a", "value": "2"}]}))).unwrap_err();
        assert!(e.message.contains("duplicate"), "{e:?}");
        assert!(check_fingerprint(Some("abc"), "abc").is_ok());
        let stale = check_fingerprint(Some("old"), "abc").unwrap_err();
        assert_eq!(stale.status, 412);
        assert_eq!(stale.reason, "conditionNotMet");
        assert!(check_fingerprint(None, "abc").is_err());
        assert_eq!(render(&set.items, "fp")["items"][0]["key"], "ssh-keys");
    }
}
