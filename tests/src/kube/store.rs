//! The API server's storage: Nodes (and the few Pods a test sets) with a
//! cluster-wide `resourceVersion` counter, the history of Node changes that
//! watches replay, and compaction, after which older versions are gone
//! (410 Expired).
//!
//! Resource versions are decimal strings of one counter, as with etcd
//! behind a real API server; a write that changes nothing keeps the old
//! version and makes no event.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{json, Value};

use super::meta::{check_name, check_pod_cidrs_kept, name_of, new_uid, normalize_node, now};
use super::selector::Selector;
use super::status::ApiError;

/// At most this many events are kept; older ones are compacted away.
const MAX_HISTORY: usize = 100_000;

const NODES: &str = "nodes";

/// What a watch reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change to a Node: the object after it (for a deletion, the last
/// state, carrying the deletion's version) and the object before it.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub kind: EventType,
    pub object: Value,
    pub prev: Option<Value>,
}

impl Event {
    /// The event as a watcher with `selector` sees it: an object that
    /// starts matching is ADDED, one that stops matching is DELETED.
    pub fn filtered(&self, selector: &Selector) -> Option<(EventType, Value)> {
        let now = self.kind != EventType::Deleted && selector.matches(&self.object);
        let before = match self.kind {
            EventType::Added => false,
            EventType::Modified => self.prev.as_ref().is_some_and(|p| selector.matches(p)),
            EventType::Deleted => selector.matches(&self.object),
        };
        match (before, now) {
            (false, true) => Some((EventType::Added, self.object.clone())),
            (true, true) => Some((EventType::Modified, self.object.clone())),
            (true, false) if self.kind == EventType::Deleted => {
                Some((EventType::Deleted, self.object.clone()))
            }
            (true, false) => {
                let mut last = self
                    .prev
                    .clone()
                    .expect("a modification has a previous state");
                set_rv(&mut last, self.rv);
                Some((EventType::Deleted, last))
            }
            (false, false) => None,
        }
    }
}

/// Which part of a Node a write may change (the `/status` subresource
/// changes the status only, the main resource everything else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
}

/// Nodes, Pods, the version counter and the event history.
#[derive(Debug)]
pub struct Store {
    nodes: BTreeMap<String, Value>,
    pods: BTreeMap<(String, String), Value>,
    rv: u64,
    /// Events with versions above `compacted`, oldest first.
    history: VecDeque<Event>,
    compacted: u64,
}

impl Store {
    /// An empty store whose first write gets version `after + 1`; every
    /// version up to `after` counts as compacted.
    pub fn new(after: u64) -> Store {
        Store {
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
            rv: after,
            history: VecDeque::new(),
            compacted: after,
        }
    }

    /// The latest resource version.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Versions at or below this one can no longer be watched from... except
    /// the latest, from which nothing was missed.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Forgets the history: a watch from any earlier version gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    pub fn node(&self, name: &str) -> Result<Value, ApiError> {
        self.nodes
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(NODES, name))
    }

    /// The Nodes `selector` selects, by name.
    pub fn nodes(&self, selector: &Selector) -> Vec<Value> {
        self.nodes
            .values()
            .filter(|n| selector.matches(n))
            .cloned()
            .collect()
    }

    /// Stores a new Node (what `POST /api/v1/nodes` does).
    pub fn create_node(&mut self, body: Value) -> Result<Value, ApiError> {
        let name = name_of(&body).to_string();
        check_name("Node", &name)?;
        let mut node = normalize_node(body, &name)?;
        if self.nodes.contains_key(&name) {
            return Err(ApiError::already_exists(NODES, &name));
        }
        let meta = node["metadata"].as_object_mut().expect("normalized");
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.remove("deletionTimestamp");
        self.rv += 1;
        set_rv(&mut node, self.rv);
        self.nodes.insert(name, node.clone());
        self.record(EventType::Added, node.clone(), None);
        Ok(node)
    }

    /// Replaces Node `name` with what `change` makes of it (PUT or PATCH).
    /// The server-owned metadata stays; `part` says whether the status
    /// or everything but the status may change. A `resourceVersion` in the
    /// result other than the current one is a conflict.
    pub fn update_node(
        &mut self,
        name: &str,
        part: Part,
        change: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let old = self.node(name)?;
        let new = change(&old)?;
        if !new.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        let new_name = name_of(&new);
        if !new_name.is_empty() && new_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({new_name}) does not match the name on the URL ({name})"
            )));
        }
        check_precondition(&new, &old, name)?;
        let new = self.merge_parts(&old, new, part, name)?;
        check_pod_cidrs_kept(&old, &new, name)?;
        if new == old {
            return Ok(old);
        }
        self.rv += 1;
        let mut new = new;
        set_rv(&mut new, self.rv);
        self.nodes.insert(name.to_string(), new.clone());
        self.record(EventType::Modified, new.clone(), Some(old));
        Ok(new)
    }

    /// The stored form of an update: server-owned metadata from `old`, and
    /// the part the write may not change from `old` too.
    fn merge_parts(
        &self,
        old: &Value,
        mut new: Value,
        part: Part,
        name: &str,
    ) -> Result<Value, ApiError> {
        match part {
            Part::Main => new["status"] = old["status"].clone(),
            Part::Status => {
                new["metadata"] = old["metadata"].clone();
                new["spec"] = old["spec"].clone();
            }
        }
        let meta = new["metadata"].as_object_mut();
        let meta =
            meta.ok_or_else(|| ApiError::invalid("Node", name, "metadata", "must be an object"))?;
        meta.insert("name".into(), json!(name));
        for field in ["uid", "creationTimestamp", "resourceVersion"] {
            meta.insert(field.into(), old["metadata"][field].clone());
        }
        normalize_node(new, name)
    }

    /// Removes Node `name`; `uid`/`resource_version` are DELETE's
    /// preconditions. Returns the last state, at the deletion's version.
    pub fn delete_node(
        &mut self,
        name: &str,
        uid: Option<&str>,
        resource_version: Option<&str>,
    ) -> Result<Value, ApiError> {
        let old = self.node(name)?;
        if uid.is_some_and(|u| old["metadata"]["uid"] != u) {
            return Err(ApiError::conflict(
                NODES,
                name,
                "Precondition failed: UID in precondition does not match the UID of the object",
            ));
        }
        if resource_version.is_some_and(|rv| old["metadata"]["resourceVersion"] != rv) {
            return Err(ApiError::conflict(NODES, name, "the object has been modified; please apply your changes to the latest version and try again"));
        }
        self.nodes.remove(name);
        self.rv += 1;
        let mut last = old;
        set_rv(&mut last, self.rv);
        self.record(EventType::Deleted, last.clone(), None);
        Ok(last)
    }

    /// Events after version `rv`, or 410 when some of them were compacted.
    pub fn events_after(&self, rv: u64) -> Result<Vec<Event>, ApiError> {
        if rv < self.compacted {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                self.compacted + 1
            )));
        }
        Ok(self.history.iter().filter(|e| e.rv > rv).cloned().collect())
    }

    /// Sets Pod `namespace/name` to run on `node` (what the scheduler and
    /// kubelet would have made), for flanneld's pod → node lookup.
    pub fn set_pod(&mut self, namespace: &str, name: &str, node: &str) -> Value {
        self.rv += 1;
        let pod = json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": new_uid(),
                "resourceVersion": self.rv.to_string(),
                "creationTimestamp": now(),
            },
            "spec": {"nodeName": node, "containers": [{"name": "kube-flannel", "image": "flannel"}]},
            "status": {"phase": "Running"},
        });
        self.pods
            .insert((namespace.to_string(), name.to_string()), pod.clone());
        pod
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let key = (namespace.to_string(), name.to_string());
        self.pods
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found("pods", name))
    }

    fn record(&mut self, kind: EventType, object: Value, prev: Option<Value>) {
        let rv = self.rv;
        self.history.push_back(Event {
            rv,
            kind,
            object,
            prev,
        });
        while self.history.len() > MAX_HISTORY {
            let dropped = self.history.pop_front().expect("non-empty");
            self.compacted = dropped.rv;
        }
    }
}

fn set_rv(obj: &mut Value, rv: u64) {
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
}

/// A `metadata.resourceVersion` in an update must be the current one
/// (optimistic concurrency); without one the update is unconditional, as
/// Nodes allow.
fn check_precondition(new: &Value, old: &Value, name: &str) -> Result<(), ApiError> {
    match new["metadata"]["resourceVersion"].as_str() {
        None | Some("") => Ok(()),
        Some(rv) if old["metadata"]["resourceVersion"] == rv => Ok(()),
        Some(_) => Err(ApiError::conflict(
            NODES,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::selector::LabelSelector;

    fn node(name: &str) -> Value {
        json!({"metadata": {"name": name}})
    }

    fn rv(obj: &Value) -> u64 {
        obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn writes_bump_the_version_and_record_events() {
        let mut s = Store::new(0);
        let a = s.create_node(node("a")).unwrap();
        assert_eq!(rv(&a), 1);
        assert_eq!(s.create_node(node("a")).unwrap_err().code, 409);
        let patched = s
            .update_node("a", Part::Main, |old| {
                let mut n = old.clone();
                n["metadata"]["labels"] = json!({"x": "y"});
                Ok(n)
            })
            .unwrap();
        assert_eq!(rv(&patched), 2);
        assert_eq!(patched["metadata"]["uid"], a["metadata"]["uid"]);
        let deleted = s.delete_node("a", None, None).unwrap();
        assert_eq!(rv(&deleted), 3);
        let kinds: Vec<_> = s.events_after(0).unwrap().iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [EventType::Added, EventType::Modified, EventType::Deleted]
        );
        assert_eq!(s.events_after(2).unwrap().len(), 1);
        assert_eq!(s.delete_node("a", None, None).unwrap_err().code, 404);
    }

    #[test]
    fn unchanged_update_keeps_the_version() {
        let mut s = Store::new(0);
        s.create_node(node("a")).unwrap();
        let same = s
            .update_node("a", Part::Main, |old| Ok(old.clone()))
            .unwrap();
        assert_eq!(rv(&same), 1);
        assert_eq!(s.events_after(0).unwrap().len(), 1);
    }

    #[test]
    fn stale_resource_version_conflicts() {
        let mut s = Store::new(0);
        let a = s.create_node(node("a")).unwrap();
        s.update_node("a", Part::Main, |o| {
            Ok(json!({"metadata": o["metadata"], "spec": {"unschedulable": true}}))
        })
        .unwrap();
        let err = s
            .update_node("a", Part::Main, |_| Ok(a.clone()))
            .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        let err = s.delete_node("a", None, Some("1")).unwrap_err();
        assert_eq!(err.code, 409);
    }

    #[test]
    fn status_and_main_resource_change_their_own_parts() {
        let mut s = Store::new(0);
        s.create_node(node("a")).unwrap();
        let change = |o: &Value| {
            let mut n = o.clone();
            n["spec"]["podCIDR"] = json!("10.244.1.0/24");
            n["status"]["addresses"] = json!([{"type": "InternalIP", "address": "192.0.2.11"}]);
            Ok(n)
        };
        let main = s.update_node("a", Part::Main, change).unwrap();
        assert_eq!(main["spec"]["podCIDRs"], json!(["10.244.1.0/24"]));
        assert!(main["status"].get("addresses").is_none());
        let status = s
            .update_node("a", Part::Status, |o| {
                let mut n = change(o)?;
                n["spec"]["podCIDR"] = json!("10.244.9.0/24");
                Ok(n)
            })
            .unwrap();
        assert_eq!(status["spec"]["podCIDR"], "10.244.1.0/24");
        assert_eq!(status["status"]["addresses"][0]["address"], "192.0.2.11");
    }

    #[test]
    fn compaction_expires_older_versions() {
        let mut s = Store::new(0);
        s.create_node(node("a")).unwrap();
        s.create_node(node("b")).unwrap();
        s.compact();
        assert_eq!(s.events_after(1).unwrap_err().code, 410);
        assert!(s.events_after(2).unwrap().is_empty());
        s.create_node(node("c")).unwrap();
        assert_eq!(s.events_after(2).unwrap().len(), 1);
    }

    #[test]
    fn events_seen_through_a_selector() {
        let mut s = Store::new(0);
        s.create_node(node("a")).unwrap();
        let label = |v: &str| {
            let v = v.to_string();
            move |o: &Value| {
                let mut n = o.clone();
                n["metadata"]["labels"] = json!({"role": v});
                Ok(n)
            }
        };
        s.update_node("a", Part::Main, label("worker")).unwrap();
        s.update_node("a", Part::Main, label("master")).unwrap();
        s.delete_node("a", None, None).unwrap();
        let sel = Selector {
            labels: LabelSelector::parse("role=worker").unwrap(),
            ..Default::default()
        };
        let seen: Vec<_> = s
            .events_after(0)
            .unwrap()
            .iter()
            .filter_map(|e| e.filtered(&sel))
            .map(|(t, o)| (t, rv(&o), o["metadata"]["labels"]["role"].clone()))
            .collect();
        assert_eq!(
            seen,
            [
                (EventType::Added, 2, json!("worker")),
                (EventType::Deleted, 3, json!("worker"))
            ]
        );
    }
}
