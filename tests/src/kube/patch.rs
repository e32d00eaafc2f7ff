//! The three patch formats of `PATCH /api/v1/nodes/{name}`: JSON merge
//! patch (RFC 7386), Kubernetes' strategic merge patch, and JSON patch
//! (RFC 6902).
//!
//! A strategic merge patch is a merge patch in which some lists merge
//! instead of being replaced. Which lists, and by which key, is fixed by the
//! Go types of the resource (`patchStrategy`/`patchMergeKey` tags); for Node
//! those are listed in [`node_list_strategy`]. Every other list, `spec.taints`
//! included (an atomic list in `core/v1`), is replaced whole.

use serde_json::{Map, Value};

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("invalid patch: {0}")]
    Invalid(String),
    /// A JSON patch `test` operation failed.
    #[error("the server rejected our request due to an error in our request: {0}")]
    TestFailed(String),
}

fn invalid(msg: impl Into<String>) -> PatchError {
    PatchError::Invalid(msg.into())
}

/// RFC 7386: objects merge key by key, `null` removes a key, anything else
/// (lists included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// How a strategic merge patch treats one list field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the old one (no patch strategy: atomic).
    Replace,
    /// Items are objects merged by the value of this key.
    MergeByKey(&'static str),
    /// Items are scalars; the patch's items are added to the old ones.
    MergePrimitive,
}

/// The patch strategies of Node's lists (`k8s.io/api/core/v1` tags).
pub fn node_list_strategy(path: &[&str]) -> ListStrategy {
    match path {
        ["metadata", "finalizers"] | ["spec", "podCIDRs"] => ListStrategy::MergePrimitive,
        ["metadata", "ownerReferences"] => ListStrategy::MergeByKey("uid"),
        ["status", "conditions"] | ["status", "addresses"] => ListStrategy::MergeByKey("type"),
        ["status", "volumesAttached"] => ListStrategy::MergeByKey("name"),
        _ => ListStrategy::Replace,
    }
}

/// Applies a strategic merge patch to `target`, with the list strategies
/// `lists` gives for each field path. Supports the directives a client
/// sends by hand or from `kubectl patch`/`kubectl apply`: `$patch`
/// (`replace`, `delete`, `merge`), `$retainKeys`,
/// `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>`.
pub fn strategic_merge_patch(
    target: &Value,
    patch: &Value,
    lists: fn(&[&str]) -> ListStrategy,
) -> Result<Value, PatchError> {
    let patch = patch
        .as_object()
        .ok_or_else(|| invalid("a strategic merge patch must be a JSON object"))?;
    let merged = Smp { lists }.merge_map(target.as_object(), patch, &mut Vec::new())?;
    Ok(merged
        .map(Value::Object)
        .unwrap_or(Value::Object(Map::new())))
}

struct Smp {
    lists: fn(&[&str]) -> ListStrategy,
}

impl Smp {
    /// The merged map, or `None` when the patch says `$patch: delete`.
    fn merge_map(
        &self,
        target: Option<&Map<String, Value>>,
        patch: &Map<String, Value>,
        path: &mut Vec<String>,
    ) -> Result<Option<Map<String, Value>>, PatchError> {
        let mut out = match patch.get("$patch").map(|d| d.as_str()) {
            None | Some(Some("merge")) => target.cloned().unwrap_or_default(),
            Some(Some("replace")) => Map::new(),
            Some(Some("delete")) => return Ok(None),
            Some(other) => return Err(invalid(format!("unknown $patch directive {other:?}"))),
        };
        for (key, value) in patch {
            self.merge_key(&mut out, key, value, path)?;
        }
        if let Some(retain) = patch.get("$retainKeys") {
            retain_keys(&mut out, retain)?;
        }
        Ok(Some(out))
    }

    fn merge_key(
        &self,
        out: &mut Map<String, Value>,
        key: &str,
        value: &Value,
        path: &mut Vec<String>,
    ) -> Result<(), PatchError> {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            return Ok(());
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            return delete_from_primitive_list(out, field, value);
        }
        if value.is_null() {
            out.remove(key);
            return Ok(());
        }
        path.push(key.to_string());
        let merged = self.merge_value(out.get(key), value, path);
        path.pop();
        match merged? {
            Some(v) => out.insert(key.to_string(), v),
            None => out.remove(key),
        };
        Ok(())
    }

    fn merge_value(
        &self,
        target: Option<&Value>,
        patch: &Value,
        path: &mut Vec<String>,
    ) -> Result<Option<Value>, PatchError> {
        match patch {
            Value::Object(p) => {
                let merged = self.merge_map(target.and_then(Value::as_object), p, path)?;
                Ok(merged.map(Value::Object))
            }
            Value::Array(items) => {
                let old = target.and_then(Value::as_array);
                self.merge_list(old, items, path)
                    .map(|l| Some(Value::Array(l)))
            }
            scalar => Ok(Some(scalar.clone())),
        }
    }

    fn merge_list(
        &self,
        old: Option<&Vec<Value>>,
        patch: &[Value],
        path: &mut Vec<String>,
    ) -> Result<Vec<Value>, PatchError> {
        let names: Vec<&str> = path.iter().map(String::as_str).collect();
        match (self.lists)(&names) {
            ListStrategy::Replace => Ok(strip_directives(patch)),
            ListStrategy::MergePrimitive => Ok(union(old.map(Vec::as_slice), patch)),
            ListStrategy::MergeByKey(key) => self.merge_keyed(old, patch, key, path),
        }
    }

    /// Merges list items by `key`: a patch item updates the old item with the
    /// same key (or is appended); `{"$patch": "delete", key: …}` removes it;
    /// a `{"$patch": "replace"}` item makes the patch list replace the old.
    fn merge_keyed(
        &self,
        old: Option<&Vec<Value>>,
        patch: &[Value],
        key: &str,
        path: &mut Vec<String>,
    ) -> Result<Vec<Value>, PatchError> {
        let replace = patch.iter().any(is_list_replace);
        let mut out: Vec<Value> = match (replace, old) {
            (false, Some(old)) => old.clone(),
            _ => Vec::new(),
        };
        for item in patch {
            let Some(obj) = item.as_object() else {
                return Err(invalid(format!("list {} needs objects", path.join("."))));
            };
            if is_list_replace(item) {
                continue;
            }
            let id = obj.get(key).ok_or_else(|| {
                invalid(format!(
                    "an item of {} has no merge key {key:?}",
                    path.join(".")
                ))
            })?;
            let pos = out.iter().position(|o| o.get(key) == Some(id));
            let existing = pos.and_then(|i| out[i].as_object());
            match (self.merge_map(existing, obj, path)?, pos) {
                (Some(merged), Some(i)) => out[i] = Value::Object(merged),
                (Some(merged), None) => out.push(Value::Object(merged)),
                (None, Some(i)) => drop(out.remove(i)),
                (None, None) => {}
            }
        }
        Ok(out)
    }
}

/// `{"$patch": "replace"}` alone in a keyed list: the patch list replaces
/// the old one.
fn is_list_replace(item: &Value) -> bool {
    item.as_object()
        .is_some_and(|o| o.len() == 1 && o.get("$patch").and_then(Value::as_str) == Some("replace"))
}

/// The old items, then each patch item not already there.
fn union(old: Option<&[Value]>, patch: &[Value]) -> Vec<Value> {
    let mut out = old.map(<[Value]>::to_vec).unwrap_or_default();
    for item in patch {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    out
}

/// A replacing list as stored: nested `$patch` markers removed.
fn strip_directives(items: &[Value]) -> Vec<Value> {
    items
        .iter()
        .map(|item| match item {
            Value::Object(o) => {
                let kept = o.iter().filter(|(k, _)| !k.starts_with('$'));
                Value::Object(kept.map(|(k, v)| (k.clone(), v.clone())).collect())
            }
            other => other.clone(),
        })
        .collect()
}

fn delete_from_primitive_list(
    out: &mut Map<String, Value>,
    field: &str,
    values: &Value,
) -> Result<(), PatchError> {
    let values = values
        .as_array()
        .ok_or_else(|| invalid(format!("$deleteFromPrimitiveList/{field} needs a list")))?;
    if let Some(Value::Array(list)) = out.get_mut(field) {
        list.retain(|v| !values.contains(v));
    }
    Ok(())
}

fn retain_keys(out: &mut Map<String, Value>, retain: &Value) -> Result<(), PatchError> {
    let keys = retain
        .as_array()
        .ok_or_else(|| invalid("$retainKeys needs a list of field names"))?;
    out.retain(|k, _| keys.iter().any(|r| r.as_str() == Some(k)));
    Ok(())
}

/// RFC 6902: applies each operation in order; all or nothing.
pub fn json_patch(target: &Value, ops: &Value) -> Result<Value, PatchError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| invalid("a JSON patch must be a list of operations"))?;
    let mut doc = target.clone();
    for op in ops {
        apply_op(&mut doc, op)?;
    }
    Ok(doc)
}

fn apply_op(doc: &mut Value, op: &Value) -> Result<(), PatchError> {
    let field = |name: &str| {
        op.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("operation {op} has no string {name:?}")))
    };
    let value = || {
        op.get("value")
            .cloned()
            .ok_or_else(|| invalid(format!("operation {op} has no value")))
    };
    let path = field("path")?;
    match field("op")? {
        "add" => pointer_add(doc, path, value()?),
        "remove" => pointer_remove(doc, path).map(drop),
        "replace" => {
            pointer_remove(doc, path)?;
            pointer_add(doc, path, value()?)
        }
        "move" => {
            let moved = pointer_remove(doc, field("from")?)?;
            pointer_add(doc, path, moved)
        }
        "copy" => {
            let copied = doc.pointer(field("from")?).cloned();
            let copied = copied
                .ok_or_else(|| invalid(format!("no value at {}", field("from").unwrap_or(""))))?;
            pointer_add(doc, path, copied)
        }
        "test" => match doc.pointer(path) {
            Some(v) if *v == value()? => Ok(()),
            _ => Err(PatchError::TestFailed(format!("test failed at {path}"))),
        },
        other => Err(invalid(format!("unknown operation {other:?}"))),
    }
}

/// Splits a JSON pointer into its parent pointer and unescaped last token.
fn split_pointer(path: &str) -> Result<(&str, String), PatchError> {
    let cut = path
        .rfind('/')
        .ok_or_else(|| invalid(format!("bad JSON pointer {path:?}")))?;
    let last = path[cut + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..cut], last))
}

fn pointer_add(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let missing = || invalid(format!("no parent for {path:?}"));
    match doc.pointer_mut(parent).ok_or_else(missing)? {
        Value::Object(map) => {
            map.insert(last, value);
            Ok(())
        }
        Value::Array(list) => {
            let at = if last == "-" {
                list.len()
            } else {
                index(&last, list.len() + 1)?
            };
            list.insert(at, value);
            Ok(())
        }
        _ => Err(missing()),
    }
}

fn pointer_remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let (parent, last) = split_pointer(path)?;
    let missing = || invalid(format!("no value at {path:?}"));
    match doc.pointer_mut(parent).ok_or_else(missing)? {
        Value::Object(map) => map.remove(&last).ok_or_else(missing),
        Value::Array(list) => Ok(list.remove(index(&last, list.len())?)),
        _ => Err(missing()),
    }
}

fn index(token: &str, bound: usize) -> Result<usize, PatchError> {
    match token.parse::<usize>() {
        Ok(i) if i < bound && (token == "0" || !token.starts_with('0')) => Ok(i),
        _ => Err(invalid(format!("bad list index {token:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(target: Value, patch: Value) -> Value {
        strategic_merge_patch(&target, &patch, node_list_strategy).unwrap()
    }

    #[test]
    fn merge_patch_follows_rfc7386_examples() {
        // The examples of RFC 7386, appendix A.
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }

    #[test]
    fn strategic_patch_merges_conditions_by_type() {
        let node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady"},
            {"type": "MemoryPressure", "status": "False"},
        ]}});
        let patch = json!({"status": {"conditions": [
            {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp"},
            {"type": "Ready", "status": "False"},
        ]}});
        let want = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "reason": "KubeletReady"},
            {"type": "MemoryPressure", "status": "False"},
            {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp"},
        ]}});
        assert_eq!(smp(node, patch), want);
    }

    #[test]
    fn strategic_patch_deletes_and_replaces_keyed_items() {
        let node = json!({"status": {"addresses": [
            {"type": "InternalIP", "address": "192.0.2.11"},
            {"type": "Hostname", "address": "n1"},
        ]}});
        let delete = json!({"status": {"addresses": [{"$patch": "delete", "type": "Hostname"}]}});
        let want =
            json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.11"}]}});
        assert_eq!(smp(node.clone(), delete), want);
        let replace = json!({"status": {"addresses": [
            {"$patch": "replace"}, {"type": "ExternalIP", "address": "198.51.100.1"},
        ]}});
        let want =
            json!({"status": {"addresses": [{"type": "ExternalIP", "address": "198.51.100.1"}]}});
        assert_eq!(smp(node, replace), want);
    }

    #[test]
    fn strategic_patch_replaces_atomic_lists_and_unions_primitive_ones() {
        let node = json!({"spec": {
            "taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoSchedule"}],
            "podCIDRs": ["10.244.1.0/24"],
        }});
        let patch = json!({"spec": {
            "taints": [{"key": "c", "effect": "NoExecute"}],
            "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"],
        }});
        let want = json!({"spec": {
            "taints": [{"key": "c", "effect": "NoExecute"}],
            "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"],
        }});
        assert_eq!(smp(node, patch), want);
    }

    #[test]
    fn strategic_patch_maps_behave_as_merge_patch() {
        let node = json!({"metadata": {"annotations": {"a": "1", "b": "2"}, "labels": {"x": "y"}}});
        let patch = json!({"metadata": {"annotations": {"a": null, "c": "3"}}});
        let want = json!({"metadata": {"annotations": {"b": "2", "c": "3"}, "labels": {"x": "y"}}});
        assert_eq!(smp(node, patch), want);
    }

    #[test]
    fn strategic_patch_directives() {
        let node =
            json!({"metadata": {"finalizers": ["a", "b", "c"], "labels": {"x": "1", "y": "2"}}});
        let patch = json!({"metadata": {
            "$deleteFromPrimitiveList/finalizers": ["b"],
            "$setElementOrder/finalizers": ["a", "c"],
            "labels": {"$patch": "replace", "z": "3"},
        }});
        let want = json!({"metadata": {"finalizers": ["a", "c"], "labels": {"z": "3"}}});
        assert_eq!(smp(node.clone(), patch), want);
        let retain = json!({"metadata": {"labels": {"$retainKeys": ["y"], "y": "5"}}});
        let want = json!({"metadata": {"finalizers": ["a", "b", "c"], "labels": {"y": "5"}}});
        assert_eq!(smp(node, retain), want);
    }

    #[test]
    fn strategic_patch_rejects_bad_input() {
        let node = json!({});
        let no_key = json!({"status": {"conditions": [{"status": "True"}]}});
        assert!(strategic_merge_patch(&node, &no_key, node_list_strategy).is_err());
        assert!(strategic_merge_patch(&node, &json!([1]), node_list_strategy).is_err());
        let bad = json!({"$patch": "explode"});
        assert!(strategic_merge_patch(&node, &bad, node_list_strategy).is_err());
    }

    #[test]
    fn json_patch_operations() {
        let doc = json!({"metadata": {"labels": {"a/b": "1"}}, "spec": {"podCIDRs": ["x"]}});
        let ops = json!([
            {"op": "test", "path": "/metadata/labels/a~1b", "value": "1"},
            {"op": "add", "path": "/metadata/annotations", "value": {"k": "v"}},
            {"op": "add", "path": "/spec/podCIDRs/-", "value": "y"},
            {"op": "replace", "path": "/spec/podCIDRs/0", "value": "z"},
            {"op": "copy", "from": "/spec/podCIDRs/0", "path": "/spec/podCIDR"},
            {"op": "move", "from": "/metadata/labels/a~1b", "path": "/metadata/labels/c"},
            {"op": "remove", "path": "/metadata/annotations/k"},
        ]);
        let want = json!({
            "metadata": {"labels": {"c": "1"}, "annotations": {}},
            "spec": {"podCIDRs": ["z", "y"], "podCIDR": "z"},
        });
        assert_eq!(json_patch(&doc, &ops).unwrap(), want);
    }

    #[test]
    fn json_patch_is_all_or_nothing() {
        let doc = json!({"a": 1});
        let failing_test = json!([{"op": "add", "path": "/b", "value": 2}, {"op": "test", "path": "/a", "value": 2}]);
        assert!(matches!(
            json_patch(&doc, &failing_test),
            Err(PatchError::TestFailed(_))
        ));
        let missing = json!([{"op": "remove", "path": "/nope"}]);
        assert!(json_patch(&doc, &missing).is_err());
        let bad_index = json!([{"op": "add", "path": "/l/01", "value": 1}]);
        assert!(json_patch(&json!({"l": [0]}), &bad_index).is_err());
    }
}
