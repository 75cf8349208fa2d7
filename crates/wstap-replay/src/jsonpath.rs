//! Paths to values inside JSON messages whose values may differ from one run to the next
//! (timestamps, ids): a JSON pointer (`/order/id`, RFC 6901) or a dotted path
//! (`order.id`), `*` standing for any key or index (`items.*.ts`). Erasing them from both
//! sides before comparing lets a replay match what matters. Pure.

use serde_json::Value;

/// A path to values in a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    /// Its keys or indexes, `*` for any.
    steps: Vec<String>,
}

impl std::str::FromStr for JsonPath {
    type Err = String;

    fn from_str(s: &str) -> Result<JsonPath, String> {
        let steps: Vec<String> = match s.strip_prefix('/') {
            // RFC 6901: `~1` is `/` and `~0` is `~`.
            Some(pointer) => pointer.split('/').map(|k| k.replace("~1", "/").replace("~0", "~")).collect(),
            None => s.split('.').map(str::to_owned).collect(),
        };
        if s.is_empty() || steps.iter().any(String::is_empty) && !s.starts_with('/') {
            return Err(format!("{s:?} is not a JSON pointer (/a/b) or a dotted path (a.b, items.*.id)"));
        }
        Ok(JsonPath { steps })
    }
}

impl std::fmt::Display for JsonPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.steps.join("."))
    }
}

impl JsonPath {
    /// Replaces every value at this path in `v` with `null` (kept in place, so that a
    /// value missing on one side still differs from one present).
    pub fn erase(&self, v: &mut Value) {
        erase(v, &self.steps);
    }
}

fn erase(v: &mut Value, steps: &[String]) {
    let Some((first, rest)) = steps.split_first() else {
        *v = Value::Null;
        return;
    };
    match v {
        Value::Object(map) if first == "*" => map.values_mut().for_each(|c| erase(c, rest)),
        Value::Object(map) => {
            if let Some(c) = map.get_mut(first) {
                erase(c, rest);
            }
        }
        Value::Array(items) if first == "*" => items.iter_mut().for_each(|c| erase(c, rest)),
        Value::Array(items) => {
            if let Some(c) = first.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                erase(c, rest);
            }
        }
        _ => {}
    }
}

/// `data` as JSON with the values at `paths` erased, written back in a canonical form
/// (keys sorted, no spaces); `None` when it is not JSON.
pub(crate) fn erased(data: &[u8], paths: &[JsonPath]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(data).ok()?;
    paths.iter().for_each(|p| p.erase(&mut v));
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_and_dotted_paths_erase_the_values_they_name() {
        let paths: Vec<JsonPath> = ["/order/id", "items.*.ts", "/a~1b"].iter().map(|p| p.parse().unwrap()).collect();
        let a = br#"{"order":{"id":7,"qty":2},"items":[{"ts":1,"n":"x"},{"ts":2,"n":"y"}],"a/b":3}"#;
        let b = br#"{"a/b":4, "items":[{"n":"x","ts":9},{"ts":8,"n":"y"}],"order":{"qty":2,"id":8}}"#;
        assert_eq!(erased(a, &paths), erased(b, &paths), "only erased values and key order differ");
        let c = br#"{"order":{"id":7,"qty":3},"items":[],"a/b":3}"#;
        assert_ne!(erased(a, &paths), erased(c, &paths), "a value that matters differs");
        assert_eq!(erased(b"not json", &paths), None);
        assert!("".parse::<JsonPath>().is_err() && "a..b".parse::<JsonPath>().is_err());
    }
}
