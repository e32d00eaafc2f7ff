//! The `kube` crate (kube-rs, as flanneld's kube subnet manager uses it)
//! against the Kubernetes API emulator: typed lists and patches, and the
//! runtime watcher, which must re-list after a 410.

use std::time::Duration;

use futures::StreamExt;
use harness::KubeApi;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::mpsc;

async fn client(api: &KubeApi) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(api.kubeconfig()).expect("read the kubeconfig");
    let options = KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .expect("a client config");
    kube::Client::try_from(config).expect("a client")
}

fn names(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect()
}

fn api_error(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(status) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_client_lists_patches_and_gets_conflicts() {
    let api = KubeApi::start_loopback();
    api.create_node("kr1", "192.0.2.31");
    api.create_node("kr2", "192.0.2.32");
    api.patch_node_status(
        "kr1",
        &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
    );
    let nodes: Api<Node> = Api::all(client(&api).await);

    let list = nodes.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&list.items), ["kr1", "kr2"]);
    let rv = api.resource_version().to_string();
    assert_eq!(list.metadata.resource_version.as_deref(), Some(rv.as_str()));
    let one = nodes
        .list(&ListParams::default().labels("kubernetes.io/hostname=kr2"))
        .await
        .unwrap();
    assert_eq!(names(&one.items), ["kr2"]);
    let by_name = nodes
        .list(&ListParams::default().fields("metadata.name=kr1"))
        .await
        .unwrap();
    assert_eq!(names(&by_name.items), ["kr1"]);

    let before = nodes.get("kr1").await.unwrap();
    let annotation =
        json!({"metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": "192.0.2.31"}}});
    let patched = nodes
        .patch("kr1", &PatchParams::default(), &Patch::Merge(&annotation))
        .await
        .unwrap();
    let annotations = patched.metadata.annotations.unwrap();
    assert_eq!(
        annotations["flannel.alpha.coreos.com/public-ip"],
        "192.0.2.31"
    );

    // flanneld's NetworkUnavailable condition joins kubelet's, by type.
    let condition = json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp"}]}});
    let pp = PatchParams::default();
    let patched = nodes
        .patch_status("kr1", &pp, &Patch::Strategic(&condition))
        .await
        .unwrap();
    let conditions = patched.status.unwrap().conditions.unwrap();
    let types: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Ready", "NetworkUnavailable"]);

    // `before` carries a stale resourceVersion: replacing with it conflicts.
    let err = nodes
        .replace("kr1", &PostParams::default(), &before)
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (409, "Conflict".to_string()));
    let err = nodes.get("kr9").await.unwrap_err();
    assert_eq!(api_error(err), (404, "NotFound".to_string()));
}

/// What the watcher reported, in a form a test compares.
fn describe(event: Result<watcher::Event<Node>, watcher::Error>) -> String {
    let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
    match event {
        Ok(watcher::Event::Init) => "Init".into(),
        Ok(watcher::Event::InitApply(n)) => format!("InitApply {}", name(&n)),
        Ok(watcher::Event::InitDone) => "InitDone".into(),
        Ok(watcher::Event::Apply(n)) => format!("Apply {}", name(&n)),
        Ok(watcher::Event::Delete(n)) => format!("Delete {}", name(&n)),
        Err(watcher::Error::WatchError(status)) => format!("Error {}", status.code),
        Err(e) => format!("Error {e}"),
    }
}

async fn next(events: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("a watcher event within 20 s")
        .expect("the watcher runs")
}

async fn expect(events: &mut mpsc::UnboundedReceiver<String>, want: &[&str]) {
    let mut got = Vec::new();
    for _ in want {
        got.push(next(events).await);
    }
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_watcher_follows_changes_and_relists_after_410() {
    let api = KubeApi::start_loopback();
    api.create_node("kw1", "192.0.2.41");
    let nodes: Api<Node> = Api::all(client(&api).await);
    let (tx, mut events) = mpsc::unbounded_channel();
    let stream = watcher(nodes, watcher::Config::default());
    let task = tokio::spawn(stream.for_each(move |e| {
        let _ = tx.send(describe(e));
        async {}
    }));
    expect(&mut events, &["Init", "InitApply kw1", "InitDone"]).await;

    api.create_node("kw2", "192.0.2.42");
    expect(&mut events, &["Apply kw2"]).await;
    api.set_pod_cidrs("kw2", &["10.244.2.0/24"]);
    expect(&mut events, &["Apply kw2"]).await;
    assert!(api.delete_node("kw1"));
    expect(&mut events, &["Delete kw1"]).await;

    // The history is compacted under the open watch: it ends with 410 and
    // the watcher lists again.
    let lists_before = list_requests(&api);
    api.expire_watches();
    expect(
        &mut events,
        &["Error 410", "Init", "InitApply kw2", "InitDone"],
    )
    .await;
    assert_eq!(
        list_requests(&api),
        lists_before + 1,
        "{:#?}",
        api.requests()
    );
    api.create_node("kw3", "192.0.2.43");
    expect(&mut events, &["Apply kw3"]).await;
    task.abort();
}

fn list_requests(api: &KubeApi) -> usize {
    let requests = api.requests();
    requests
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/nodes") && !r.contains("watch="))
        .count()
}
