//! `kubectl` against the Kubernetes API emulator, through the kubeconfig it
//! writes: an independent client checks that the emulator speaks the API
//! server's protocol (discovery, create, get, annotate, patch, delete,
//! watch). `$KUBECTL` picks another kubectl binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use harness::{bin_path, wait_until, KubeApi, Proc, TempDir};
use serde_json::{json, Value};

/// Runs `kubectl ARGS` against `api`; panics with its output on failure.
fn kubectl(api: &KubeApi, args: &[&str]) -> String {
    let out = api.kubectl().args(args).output().expect("run kubectl");
    assert!(out.status.success(), "kubectl {args:?}: {}", describe(&out));
    String::from_utf8(out.stdout).expect("kubectl prints UTF-8")
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn kubectl_json(api: &KubeApi, args: &[&str]) -> Value {
    let text = kubectl(api, args);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("kubectl {args:?} printed no JSON ({e}): {text}"))
}

/// A Node manifest as a user writes it.
fn node_manifest(dir: &TempDir, name: &str) -> String {
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"role": "worker"}},
        "spec": {"podCIDR": "10.244.7.0/24"},
    });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, node.to_string()).unwrap();
    path.display().to_string()
}

#[test]
fn kubectl_creates_reads_changes_and_deletes_nodes() {
    let api = KubeApi::start_loopback();
    let dir = TempDir::new("fl-kctl");
    let manifest = node_manifest(&dir, "kn1");
    assert_eq!(
        kubectl(&api, &["create", "-f", &manifest]).trim(),
        "node/kn1 created"
    );

    let list = kubectl_json(&api, &["get", "nodes", "-o", "json"]);
    assert_eq!(list["kind"], "List", "{list}");
    let node = &list["items"][0];
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(
        (node["kind"].as_str(), node["apiVersion"].as_str()),
        (Some("Node"), Some("v1"))
    );
    assert_eq!(node["metadata"]["labels"], json!({"role": "worker"}));
    assert_eq!(node["spec"]["podCIDRs"], json!(["10.244.7.0/24"]));
    assert_eq!(
        node["metadata"]["uid"],
        api.node("kn1").unwrap()["metadata"]["uid"]
    );

    let out = kubectl(
        &api,
        &[
            "annotate",
            "node",
            "kn1",
            "flannel.alpha.coreos.com/backend-type=vxlan",
        ],
    );
    assert_eq!(out.trim(), "node/kn1 annotated");
    let node = api.node("kn1").unwrap();
    assert_eq!(
        node["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-type"],
        "vxlan"
    );

    let by_label = kubectl(&api, &["get", "nodes", "-l", "role=worker", "-o", "name"]);
    assert_eq!(by_label.trim(), "node/kn1");
    let none = kubectl(&api, &["get", "nodes", "-l", "role=master", "-o", "name"]);
    assert_eq!(none.trim(), "");

    assert_eq!(
        kubectl(&api, &["delete", "node", "kn1"]).trim(),
        "node \"kn1\" deleted"
    );
    assert!(api.node("kn1").is_none());
    let out = api.kubectl().args(["get", "node", "kn1"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nodes \"kn1\" not found"), "{stderr}");
}

#[test]
fn kubectl_patches_with_merge_strategic_and_json_patches() {
    let api = KubeApi::start_loopback();
    api.create_node("kn2", "192.0.2.12");

    let merge = r#"{"metadata":{"labels":{"zone":"a"}},"spec":{"podCIDR":"10.244.2.0/24"}}"#;
    let out = kubectl(
        &api,
        &["patch", "node", "kn2", "--type", "merge", "-p", merge],
    );
    assert_eq!(out.trim(), "node/kn2 patched");
    let node = api.node("kn2").unwrap();
    assert_eq!(node["metadata"]["labels"]["zone"], "a");
    assert_eq!(
        node["metadata"]["labels"]["kubernetes.io/hostname"], "kn2",
        "labels merged"
    );
    assert_eq!(node["spec"]["podCIDRs"], json!(["10.244.2.0/24"]));

    // Strategic (kubectl's default): `$patch: replace` replaces the
    // labels rather than merging into them; a merge patch has no such
    // directive.
    let strategic = r#"{"metadata":{"labels":{"$patch":"replace","role":"worker"}}}"#;
    let out = kubectl(&api, &["patch", "node", "kn2", "-p", strategic]);
    assert_eq!(out.trim(), "node/kn2 patched");
    assert_eq!(
        api.node("kn2").unwrap()["metadata"]["labels"],
        json!({"role": "worker"})
    );

    let ops = r#"[{"op":"add","path":"/spec/unschedulable","value":true}]"#;
    kubectl(&api, &["patch", "node", "kn2", "--type", "json", "-p", ops]);
    assert_eq!(api.node("kn2").unwrap()["spec"]["unschedulable"], true);
    let cordoned = kubectl(
        &api,
        &[
            "get",
            "nodes",
            "--field-selector",
            "spec.unschedulable=true",
            "-o",
            "name",
        ],
    );
    assert_eq!(cordoned.trim(), "node/kn2");

    // A patch that changes nothing reports so and keeps the version.
    let rv = api.resource_version();
    let same = r#"{"metadata":{"labels":{"role":"worker"}}}"#;
    let out = kubectl(
        &api,
        &["patch", "node", "kn2", "--type", "merge", "-p", same],
    );
    assert_eq!(out.trim(), "node/kn2 patched (no change)");
    assert_eq!(api.resource_version(), rv);
}

/// `kubectl get nodes --watch` prints the current Nodes, then every later
/// change as it happens.
#[test]
fn kubectl_watch_sees_later_changes() {
    let api = KubeApi::start_loopback();
    api.create_node("kw1", "192.0.2.21");
    let template = r#"{.metadata.name} {.metadata.annotations.step}{"\n"}"#;
    let mut child = api
        .kubectl()
        .args([
            "get",
            "nodes",
            "--watch",
            "-o",
            &format!("jsonpath={template}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kubectl");
    let lines = lines_of(child.stdout.take().unwrap());
    let first = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("kubectl's first line");
    assert_eq!(first.trim(), "kw1");

    api.patch_node(
        "kw1",
        &json!({"metadata": {"annotations": {"step": "one"}}}),
    );
    api.create_node("kw2", "192.0.2.22");
    let seen: Vec<String> = (0..2)
        .map(|_| {
            lines
                .recv_timeout(Duration::from_secs(20))
                .expect("a watch event")
        })
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(seen, ["kw1 one", "kw2 "]);
}

/// Lines a child prints, as they come.
fn lines_of(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn kubectl_reports_the_servers_version_and_resources() {
    let api = KubeApi::start_loopback();
    let version = kubectl_json(&api, &["version", "-o", "json"]);
    assert_eq!(version["serverVersion"]["major"], "1", "{version}");
    assert_eq!(
        version["serverVersion"]["minor"],
        harness::kube::SERVER_VERSION.1
    );
    let resources = kubectl(&api, &["api-resources", "--no-headers", "-o", "name"]);
    let names: Vec<&str> = resources.lines().map(str::trim).collect();
    assert_eq!(names, ["nodes", "pods"], "{resources}");
}

/// The workspace binary serves until SIGTERM, with a kubeconfig kubectl
/// uses as it is.
#[test]
fn emulator_binary_serves_kubectl_until_sigterm() {
    let dir = TempDir::new("fl-kbin");
    let kubeconfig = dir.join("kubeconfig");
    let mut proc = Proc::spawn(
        Command::new(bin_path("kube-api-emulator"))
            .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
            .arg(&kubeconfig),
    );
    wait_until(Duration::from_secs(20), "the kubeconfig", || {
        proc.log().contains("serving https://127.0.0.1:")
    });
    let kubectl = |args: &[&str]| {
        let program = std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into());
        let out = Command::new(program)
            .env("HOME", dir.path())
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let manifest = node_manifest(&dir, "kb1");
    kubectl(&["create", "-f", &manifest]);
    assert_eq!(kubectl(&["get", "nodes", "-o", "name"]).trim(), "node/kb1");
    let status = proc.terminate();
    assert_eq!(status.code(), Some(0), "{}", proc.log());
    assert!(proc.log().contains("stopping"), "{}", proc.log());
}
