//! What the API server fills in and checks on a Node: its identity
//! (`uid`, `creationTimestamp`), the defaults it returns (`spec: {}`, an
//! empty `nodeInfo`), `podCIDR`/`podCIDRs` kept in step, and validation.
//! Fields it does not know are kept as they came.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::status::ApiError;

/// A random RFC 4122 version-4 UUID, as `metadata.uid`.
pub fn new_uid() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("getrandom");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The current time as Kubernetes writes it: RFC 3339, UTC, seconds.
pub fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    // jiff prints whole seconds without a fraction, with `Z` for UTC.
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::MAX)
        .to_string()
}

/// `metadata.name` of an object ("" when missing).
pub fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

/// The status a Node gets when it was created without one (what the API
/// server's defaulting returns).
fn default_status() -> Value {
    let info: Map<String, Value> = [
        "machineID",
        "systemUUID",
        "bootID",
        "kernelVersion",
        "osImage",
        "containerRuntimeVersion",
        "kubeletVersion",
        "kubeProxyVersion",
        "operatingSystem",
        "architecture",
    ]
    .iter()
    .map(|k| (k.to_string(), json!("")))
    .collect();
    json!({"daemonEndpoints": {"kubeletEndpoint": {"Port": 0}}, "nodeInfo": info})
}

/// Checks a Node body and brings it to the shape the server stores:
/// `apiVersion`/`kind` set, no namespace, `spec` and `status` present,
/// `podCIDR` and `podCIDRs` consistent. `name` is the name it must have.
pub fn normalize_node(mut node: Value, name: &str) -> Result<Value, ApiError> {
    let invalid = |field: &str, detail: &str| ApiError::invalid("Node", name, field, detail);
    check_type(&node, "Node")?;
    let obj = node
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    obj.insert("apiVersion".into(), json!("v1"));
    obj.insert("kind".into(), json!("Node"));
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    let meta = meta
        .as_object_mut()
        .ok_or_else(|| invalid("metadata", "must be an object"))?;
    meta.remove("namespace");
    for field in ["labels", "annotations"] {
        check_string_map(meta.get(field)).map_err(|d| invalid(&format!("metadata.{field}"), &d))?;
    }
    let spec = obj.entry("spec").or_insert_with(|| json!({}));
    let spec = spec
        .as_object_mut()
        .ok_or_else(|| invalid("spec", "must be an object"))?;
    sync_pod_cidrs(spec).map_err(|(field, detail)| invalid(&field, &detail))?;
    if !obj.get("status").is_some_and(Value::is_object) {
        obj.insert("status".into(), default_status());
    }
    Ok(node)
}

/// A body's `apiVersion` and `kind`, when given, must be this resource's.
fn check_type(obj: &Value, kind: &str) -> Result<(), ApiError> {
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("v1");
    let got_kind = obj.get("kind").and_then(Value::as_str).unwrap_or(kind);
    if api_version != "v1" || got_kind != kind {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) and kind ({got_kind}) do not match the expected v1 {kind}"
        )));
    }
    Ok(())
}

fn check_string_map(map: Option<&Value>) -> Result<(), String> {
    match map {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(m)) if m.values().all(Value::is_string) => Ok(()),
        Some(_) => Err("must be a map of strings".to_string()),
    }
}

/// `podCIDR` is `podCIDRs[0]`: whichever is set fills the other, as the
/// API server's conversion does; every entry must be a CIDR, at most one
/// per address family.
fn sync_pod_cidrs(spec: &mut Map<String, Value>) -> Result<(), (String, String)> {
    let single = spec
        .get("podCIDR")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let list: Vec<String> = match spec.get("podCIDRs") {
        None | Some(Value::Null) => single.map(|s| vec![s.to_string()]).unwrap_or_default(),
        Some(Value::Array(l)) => l
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or((
                "spec.podCIDRs".to_string(),
                "must be a list of strings".to_string(),
            ))?,
        Some(_) => return Err(("spec.podCIDRs".into(), "must be a list of strings".into())),
    };
    if let (Some(s), Some(first)) = (single, list.first()) {
        if s != first {
            let detail =
                format!("Invalid value: \"{s}\": must match the first element of podCIDRs");
            return Err(("spec.podCIDR".into(), detail));
        }
    }
    let mut families = Vec::new();
    for (i, cidr) in list.iter().enumerate() {
        let ip = parse_cidr(cidr).ok_or_else(|| {
            (
                format!("spec.podCIDRs[{i}]"),
                format!("Invalid value: \"{cidr}\": must be a valid CIDR"),
            )
        })?;
        if families.contains(&ip.is_ipv4()) {
            let detail = "may specify no more than one CIDR for each IP family".to_string();
            return Err(("spec.podCIDRs".into(), detail));
        }
        families.push(ip.is_ipv4());
    }
    if let Some(first) = list.first() {
        spec.insert("podCIDR".into(), json!(first));
        spec.insert("podCIDRs".into(), json!(list));
    }
    Ok(())
}

fn parse_cidr(cidr: &str) -> Option<IpAddr> {
    let (ip, len) = cidr.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some(ip)
}

/// Once set, `podCIDRs` may not change (the API server's Node update
/// validation): the node IPAM controller assigns them once, and a node's
/// pods keep their addresses.
pub fn check_pod_cidrs_kept(old: &Value, new: &Value, name: &str) -> Result<(), ApiError> {
    let old_cidrs = &old["spec"]["podCIDRs"];
    let was_set = old_cidrs.as_array().is_some_and(|l| !l.is_empty());
    if was_set && new["spec"]["podCIDRs"] != *old_cidrs {
        let detail = "Forbidden: node updates may not change podCIDR except from \"\" to valid";
        return Err(ApiError::invalid("Node", name, "spec.podCIDRs", detail));
    }
    Ok(())
}

/// A DNS subdomain (RFC 1123): what `metadata.name` of a Node must be.
pub fn check_name(kind: &str, name: &str) -> Result<(), ApiError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.starts_with(|c: char| c.is_ascii_alphanumeric())
            && l.ends_with(|c: char| c.is_ascii_alphanumeric())
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if name.is_empty() {
        return Err(ApiError::invalid(
            kind,
            name,
            "metadata.name",
            "Required value: name or generateName is required",
        ));
    }
    if name.len() > 253 || !name.split('.').all(label_ok) {
        let detail = format!("Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character");
        return Err(ApiError::invalid(kind, name, "metadata.name", &detail));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn uids_are_version_4() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
        assert_ne!(uid, new_uid());
    }

    #[test]
    fn pod_cidr_and_pod_cidrs_fill_each_other() {
        let n = normalize_node(
            json!({"metadata": {"name": "a"}, "spec": {"podCIDR": "10.244.1.0/24"}}),
            "a",
        )
        .unwrap();
        assert_eq!(n["spec"]["podCIDRs"], json!(["10.244.1.0/24"]));
        let n = normalize_node(
            json!({"spec": {"podCIDRs": ["10.244.1.0/24", "fd00::/64"]}}),
            "a",
        )
        .unwrap();
        assert_eq!(n["spec"]["podCIDR"], "10.244.1.0/24");
        let bad = json!({"spec": {"podCIDRs": ["10.244.1.0/24", "10.244.2.0/24"]}});
        assert_eq!(normalize_node(bad, "a").unwrap_err().code, 422);
        let bad = json!({"spec": {"podCIDR": "10.244.1.0/33"}});
        assert_eq!(normalize_node(bad, "a").unwrap_err().code, 422);
    }

    #[test]
    fn defaults_and_kept_fields() {
        let n = normalize_node(
            json!({"metadata": {"namespace": "x"}, "custom": {"k": 1}}),
            "a",
        )
        .unwrap();
        assert_eq!(n["apiVersion"], "v1");
        assert_eq!(n["kind"], "Node");
        assert!(n["metadata"].get("namespace").is_none());
        assert_eq!(n["spec"], json!({}));
        assert_eq!(n["status"]["nodeInfo"]["kubeletVersion"], "");
        assert_eq!(n["custom"], json!({"k": 1}));
        let wrong_kind = json!({"apiVersion": "v1", "kind": "Pod"});
        assert_eq!(normalize_node(wrong_kind, "a").unwrap_err().code, 400);
    }

    #[test]
    fn pod_cidrs_are_set_once() {
        let empty = json!({"spec": {}});
        let one = json!({"spec": {"podCIDRs": ["10.244.1.0/24"]}});
        let two = json!({"spec": {"podCIDRs": ["10.244.1.0/24", "fd00::/64"]}});
        assert!(check_pod_cidrs_kept(&empty, &one, "a").is_ok());
        assert!(check_pod_cidrs_kept(&one, &one, "a").is_ok());
        let err = check_pod_cidrs_kept(&one, &two, "a").unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        assert!(
            err.message
                .starts_with("Node \"a\" is invalid: spec.podCIDRs: Forbidden"),
            "{}",
            err.message
        );
        assert!(check_pod_cidrs_kept(&one, &empty, "a").is_err());
    }

    #[test]
    fn names_are_dns_subdomains() {
        assert!(check_name("Node", "node-1.example").is_ok());
        for bad in ["", "Node1", "-a", "a..b", "a_b"] {
            assert_eq!(check_name("Node", bad).unwrap_err().code, 422, "{bad:?}");
        }
    }
}
