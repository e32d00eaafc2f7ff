//! The Kubernetes API emulator at the REST level: exact `Status` bodies
//! (401, 404, 409, 410, 422), selectors, paging, watch streams with
//! bookmarks and 410 Expired, the `/status` subresource, Pods, and the
//! server inside a network namespace, stopped and restarted.

use std::time::Duration;

use harness::{KubeApi, Netns, Restart};
use http_body_util::BodyExt;
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use serde_json::{json, Value};

async fn config(api: &KubeApi) -> kube::Config {
    let kubeconfig = Kubeconfig::read_from(api.kubeconfig()).expect("read the kubeconfig");
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a client config")
}

/// A client that sends requests as they are and returns the raw answers.
struct Rest(kube::Client);

impl Rest {
    async fn new(api: &KubeApi) -> Rest {
        let mut config = config(api).await;
        config.default_retry = false;
        Rest(kube::Client::try_from(config).expect("a client"))
    }

    /// Without a token.
    async fn anonymous(api: &KubeApi) -> Rest {
        let mut config = config(api).await;
        config.auth_info = AuthInfo::default();
        Rest(kube::Client::try_from(config).expect("a client"))
    }

    /// The status code and body (JSON, or a JSON string for other text).
    async fn call(&self, method: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", content_type)
            .body(body.as_bytes().to_vec().into())
            .unwrap();
        let resp = self.0.send(req).await.expect("an answer");
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .expect("the body")
            .to_bytes();
        let text = String::from_utf8(bytes.to_vec()).expect("UTF-8");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, "application/json", "").await
    }

    /// The events of a watch that ends by itself (`timeoutSeconds`, or an
    /// error event), one JSON value per line.
    async fn watch(&self, query: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/api/v1/nodes?watch=1&{query}")).await;
        assert_eq!(status, 200, "{body}");
        let text = match body {
            Value::String(text) => text,
            one => return vec![one],
        };
        text.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON event"))
            .collect()
    }
}

fn status(code: u16, reason: &str, message: &str, details: Value) -> Value {
    let mut s = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if !details.is_null() {
        s["details"] = details;
    }
    s
}

fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// `TYPE name` of each event (`BOOKMARK rv` for bookmarks, `ERROR code`).
fn summary(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "BOOKMARK" => format!("BOOKMARK {}", rv(&e["object"])),
            "ERROR" => format!("ERROR {}", e["object"]["code"]),
            t => format!("{t} {}", e["object"]["metadata"]["name"].as_str().unwrap()),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_the_api_servers_status_objects() {
    let api = KubeApi::start_loopback();
    let rest = Rest::new(&api).await;
    let (code, body) = Rest::anonymous(&api).await.get("/api/v1/nodes").await;
    assert_eq!(
        (code, body),
        (
            401,
            status(401, "Unauthorized", "Unauthorized", Value::Null)
        )
    );

    let (code, body) = rest.get("/api/v1/nodes/n9").await;
    let details = json!({"name": "n9", "kind": "nodes"});
    assert_eq!(
        (code, body),
        (
            404,
            status(404, "NotFound", "nodes \"n9\" not found", details)
        )
    );

    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}).to_string();
    let (code, created) = rest
        .call("POST", "/api/v1/nodes", "application/json", &node)
        .await;
    assert_eq!(code, 201, "{created}");
    let (code, body) = rest
        .call("POST", "/api/v1/nodes", "application/json", &node)
        .await;
    let details = json!({"name": "n1", "kind": "nodes"});
    assert_eq!(
        (code, body),
        (
            409,
            status(
                409,
                "AlreadyExists",
                "nodes \"n1\" already exists",
                details.clone()
            )
        )
    );

    // A PUT carrying an old resourceVersion loses to the write before it.
    api.patch_node("n1", &json!({"metadata": {"labels": {"a": "b"}}}));
    let (code, body) = rest
        .call(
            "PUT",
            "/api/v1/nodes/n1",
            "application/json",
            &created.to_string(),
        )
        .await;
    let message = "Operation cannot be fulfilled on nodes \"n1\": the object has been modified; please apply your changes to the latest version and try again";
    assert_eq!(
        (code, body),
        (409, status(409, "Conflict", message, details))
    );

    api.set_pod_cidrs("n1", &["10.244.1.0/24"]);
    let patch = r#"{"spec":{"podCIDR":"10.244.9.0/24","podCIDRs":["10.244.9.0/24"]}}"#;
    let (code, body) = rest
        .call(
            "PATCH",
            "/api/v1/nodes/n1",
            "application/merge-patch+json",
            patch,
        )
        .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (422, Some("Invalid")),
        "{body}"
    );
    assert_eq!(body["details"]["causes"][0]["field"], "spec.podCIDRs");
    assert_eq!(
        api.node("n1").unwrap()["spec"]["podCIDR"],
        "10.244.1.0/24",
        "nothing changed"
    );

    let (code, body) = rest
        .call("PATCH", "/api/v1/nodes/n1", "application/yaml", "{}")
        .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (415, Some("UnsupportedMediaType")),
        "{body}"
    );
    let (code, body) = rest.get("/api/v1/services").await;
    let message = "the server could not find the requested resource";
    assert_eq!(
        (code, body),
        (404, status(404, "NotFound", message, json!({})))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_status_and_json_patch_change_their_parts() {
    let api = KubeApi::start_loopback();
    let rest = Rest::new(&api).await;
    let node = api.create_node("n1", "192.0.2.1");

    // PUT with the current version succeeds; /status ignores spec changes.
    let mut body = node.clone();
    body["status"]["phase"] = json!("Running");
    body["spec"]["unschedulable"] = json!(true);
    let (code, updated) = rest
        .call(
            "PUT",
            "/api/v1/nodes/n1/status",
            "application/json",
            &body.to_string(),
        )
        .await;
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["status"]["phase"], "Running");
    assert!(updated["spec"].get("unschedulable").is_none(), "{updated}");
    assert_eq!(rv(&updated), rv(&node) + 1);

    let ops = json!([
        {"op": "test", "path": "/metadata/name", "value": "n1"},
        {"op": "add", "path": "/metadata/labels/zone", "value": "a"},
    ]);
    let (code, patched) = rest
        .call(
            "PATCH",
            "/api/v1/nodes/n1",
            "application/json-patch+json",
            &ops.to_string(),
        )
        .await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["metadata"]["labels"]["zone"], "a");
    assert_eq!(patched["status"]["phase"], "Running");
    let failing = json!([{"op": "test", "path": "/metadata/name", "value": "n2"}]).to_string();
    let (code, _) = rest
        .call(
            "PATCH",
            "/api/v1/nodes/n1",
            "application/json-patch+json",
            &failing,
        )
        .await;
    assert_eq!(code, 400);

    let (code, deleted) = rest
        .call("DELETE", "/api/v1/nodes/n1", "application/json", "")
        .await;
    assert_eq!(code, 200);
    assert_eq!(deleted["status"], "Success");
    assert_eq!(
        deleted["details"],
        json!({"name": "n1", "kind": "nodes", "uid": node["metadata"]["uid"]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_by_label_and_field_and_page() {
    let api = KubeApi::start_loopback();
    let rest = Rest::new(&api).await;
    for (name, role) in [("n1", "worker"), ("n2", "master"), ("n3", "worker")] {
        api.create_node(name, "192.0.2.1");
        api.patch_node(name, &json!({"metadata": {"labels": {"role": role}}}));
    }
    let names = |list: &Value| -> Vec<String> {
        let items = list["items"].as_array().unwrap();
        items
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, list) = rest.get("/api/v1/nodes?labelSelector=role%3Dworker").await;
    assert_eq!(names(&list), ["n1", "n3"]);
    assert_eq!(list["kind"], "NodeList");
    assert_eq!(
        list["metadata"]["resourceVersion"],
        api.resource_version().to_string()
    );
    assert!(
        list["items"][0].get("kind").is_none(),
        "items carry no kind: {list}"
    );
    let (_, list) = rest
        .get("/api/v1/nodes?labelSelector=role+notin+(worker)")
        .await;
    assert_eq!(names(&list), ["n2"]);
    let (_, list) = rest
        .get("/api/v1/nodes?fieldSelector=metadata.name%3Dn3")
        .await;
    assert_eq!(names(&list), ["n3"]);
    let (code, body) = rest
        .get("/api/v1/nodes?fieldSelector=status.phase%3DRunning")
        .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (400, Some("BadRequest")),
        "{body}"
    );

    let (_, page) = rest.get("/api/v1/nodes?limit=2").await;
    assert_eq!(names(&page), ["n1", "n2"]);
    assert_eq!(page["metadata"]["remainingItemCount"], 1);
    let token = page["metadata"]["continue"].as_str().unwrap();
    let (_, rest_page) = rest
        .get(&format!("/api/v1/nodes?limit=2&continue={token}"))
        .await;
    assert_eq!(names(&rest_page), ["n3"]);
    assert!(rest_page["metadata"].get("continue").is_none());
    // Compacted past the list's version, the token is too old.
    api.create_node("n4", "192.0.2.4");
    api.compact();
    let (code, body) = rest
        .get(&format!("/api/v1/nodes?limit=2&continue={token}"))
        .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (410, Some("Expired")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_replay_history_filter_and_expire() {
    let api = KubeApi::start_loopback();
    let rest = Rest::new(&api).await;
    // Version 0 means "now" to a watch: start after a first write.
    api.create_node("n0", "192.0.2.10");
    let start = api.resource_version();
    api.create_node("n1", "192.0.2.1");
    api.create_node("n2", "192.0.2.2");
    api.patch_node("n1", &json!({"metadata": {"labels": {"role": "worker"}}}));
    api.patch_node("n1", &json!({"metadata": {"labels": {"role": "master"}}}));
    assert!(api.delete_node("n2"));

    let all = rest
        .watch(&format!("resourceVersion={start}&timeoutSeconds=1"))
        .await;
    assert_eq!(
        summary(&all),
        [
            "ADDED n1",
            "ADDED n2",
            "MODIFIED n1",
            "MODIFIED n1",
            "DELETED n2"
        ]
    );
    let versions: Vec<u64> = all.iter().map(|e| rv(&e["object"])).collect();
    assert_eq!(versions, (start + 1..=start + 5).collect::<Vec<_>>());
    assert_eq!(all[0]["object"]["kind"], "Node");

    // Through a selector a Node that starts matching is ADDED, one that
    // stops matching DELETED.
    let workers = rest
        .watch(&format!(
            "resourceVersion={start}&timeoutSeconds=1&labelSelector=role%3Dworker"
        ))
        .await;
    assert_eq!(summary(&workers), ["ADDED n1", "DELETED n1"]);

    // No version: the current Nodes first, as ADDED.
    let current = rest.watch("timeoutSeconds=1").await;
    assert_eq!(summary(&current), ["ADDED n0", "ADDED n1"]);

    api.compact();
    let expired = rest
        .watch(&format!("resourceVersion={start}&timeoutSeconds=1"))
        .await;
    assert_eq!(summary(&expired), ["ERROR 410"]);
    assert_eq!(expired[0]["object"]["reason"], "Expired");
    assert_eq!(expired[0]["object"]["kind"], "Status");
    let latest = api.resource_version();
    let none = rest
        .watch(&format!("resourceVersion={latest}&timeoutSeconds=1"))
        .await;
    assert!(none.is_empty(), "{none:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_get_bookmarks_when_they_allow_them() {
    let api = KubeApi::start_loopback();
    let rest = Rest::new(&api).await;
    api.create_node("n1", "192.0.2.1");
    let at = api.resource_version();
    let query = format!("resourceVersion={at}&timeoutSeconds=2");
    let with = tokio::spawn({
        let rest = Rest(rest.0.clone());
        let query = format!("{query}&allowWatchBookmarks=true");
        async move { rest.watch(&query).await }
    });
    let without = tokio::spawn({
        let rest = Rest(rest.0.clone());
        async move { rest.watch(&query).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.patch_node("n1", &json!({"metadata": {"annotations": {"k": "v"}}}));
    api.send_bookmarks();
    let with = with.await.unwrap();
    let without = without.await.unwrap();
    let bookmark = format!("BOOKMARK {}", at + 1);
    assert_eq!(summary(&with), ["MODIFIED n1".to_string(), bookmark]);
    assert_eq!(with[1]["object"]["kind"], "Node");
    assert_eq!(summary(&without), ["MODIFIED n1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_pods_and_health() {
    let api = KubeApi::start_loopback();
    let rest = Rest::new(&api).await;
    api.set_pod("kube-system", "kube-flannel-ds-x1", "n1");
    let (code, pod) = rest
        .get("/api/v1/namespaces/kube-system/pods/kube-flannel-ds-x1")
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        (pod["kind"].as_str(), pod["spec"]["nodeName"].as_str()),
        (Some("Pod"), Some("n1"))
    );
    let (code, body) = rest.get("/api/v1/namespaces/default/pods/none").await;
    assert_eq!(
        (code, body["message"].as_str()),
        (404, Some("pods \"none\" not found"))
    );

    let (_, v1) = rest.get("/api/v1").await;
    assert_eq!(v1["kind"], "APIResourceList");
    assert_eq!(v1["resources"][0]["name"], "nodes");
    let (_, apis) = rest.get("/api").await;
    assert_eq!(apis["versions"], json!(["v1"]));
    let (code, version) = Rest::anonymous(&api).await.get("/version").await;
    assert_eq!((code, version["major"].as_str()), (200, Some("1")));
    let (code, body) = Rest::anonymous(&api).await.get("/readyz").await;
    assert_eq!((code, body), (200, json!("ok")));
}

/// The server keeps its objects over a stop and restart (open watches are
/// cut); a restart without its state is a new cluster, whose history
/// starts after the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_keep_or_drop_the_state() {
    let mut api = KubeApi::start_loopback();
    api.create_node("n1", "192.0.2.1");
    let at = api.resource_version();
    let rest = Rest::new(&api).await;
    let watch = tokio::spawn({
        let rest = Rest(rest.0.clone());
        async move { rest.watch(&format!("resourceVersion={at}")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.restart(Restart::KeepState);
    let cut = tokio::time::timeout(Duration::from_secs(10), watch).await;
    assert!(cut.is_ok(), "the restart ended the open watch");
    let rest = Rest::new(&api).await;
    let (code, node) = rest.get("/api/v1/nodes/n1").await;
    assert_eq!((code, rv(&node)), (200, at));

    api.restart(Restart::DropState);
    let (code, list) = rest.get("/api/v1/nodes").await;
    assert_eq!((code, list["items"].clone()), (200, json!([])));
    let expired = rest
        .watch(&format!("resourceVersion={at}&timeoutSeconds=1"))
        .await;
    assert_eq!(summary(&expired), ["ERROR 410"]);
    assert!(api.resource_version() > at);
}

/// In a network namespace the server is reachable there only, on the
/// namespace's own address.
#[test]
fn serves_inside_a_network_namespace() {
    harness::require_root!();
    let ns = Netns::new("kapi");
    let api = KubeApi::start_in(&ns, "127.0.0.1");
    api.create_node("n1", "192.0.2.1");
    assert_eq!(api.url(), "https://127.0.0.1:6443");
    let program = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let kubectl = api.kubectl();
    let args: Vec<_> = kubectl.get_args().collect();
    let out = ns
        .cmd(&program)
        .env("HOME", api.ca().parent().unwrap())
        .args(args)
        .args(["get", "nodes", "-o", "name"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "node/n1");
    assert!(api
        .requests()
        .iter()
        .any(|r| r.starts_with("GET /api/v1/nodes")));
}
