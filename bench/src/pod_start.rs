//! Pod start time through CRI, as kubelet sees it: `RunPodSandbox` on
//! containerd (Debian's, with its CRI plugin) until the sandbox is ready,
//! with kube-flannel's conflist against the reference bridge + host-local.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use harness::{kube_flannel_conflist, kube_flannel_plugins, Containerd, LoneNode, PodMeta};
use serde_json::{json, Value};

use crate::plot::{cdfs, CdfPanel, Series};
use crate::report::{Section, Table};
use crate::stats::quantiles;
use crate::Opts;

/// The reference conflist: Debian's bridge + host-local with what flannel's
/// plugin would hand them for this node, then portmap as in kube-flannel's.
fn reference_conflist(node: &LoneNode) -> Value {
    json!({
        "cniVersion": "0.3.1", "name": "cbr0",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "isDefaultGateway": true,
             "hairpinMode": true, "ipMasq": false, "mtu": 1450,
             "ipam": {"type": "host-local", "dataDir": node.dir().join("ipam"),
                      "ranges": [[{"subnet": node.subnet()}]],
                      "routes": [{"dst": "10.244.0.0/16"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ]
    })
}

fn reference_plugins() -> Vec<PathBuf> {
    ["bridge", "host-local", "portmap"]
        .iter()
        .map(|p| PathBuf::from("/usr/lib/cni").join(p))
        .collect()
}

/// One node with containerd; fields drop in order (pods go first).
struct Side {
    ctd: Containerd,
    _node: LoneNode,
}

impl Side {
    /// Milliseconds from `RunPodSandbox` sent to the sandbox reported ready;
    /// the pod is then stopped and removed (not timed).
    fn start_one(&self, name: &str) -> Result<f64> {
        let pod = PodMeta::new(name);
        let config = self.ctd.pod_config(&pod);
        let cri = self.ctd.cri();
        let t0 = Instant::now();
        let id = cri
            .run_pod(&config)
            .map_err(|e| anyhow::anyhow!("RunPodSandbox: {}", e.message()))?;
        if !cri.pod_ready(&id).unwrap_or(false) {
            bail!("sandbox {id} not ready after RunPodSandbox");
        }
        let took = t0.elapsed().as_secs_f64() * 1e3;
        cri.stop_pod(&id)
            .and_then(|()| cri.remove_pod(&id))
            .map_err(|e| anyhow::anyhow!("removing the pod: {}", e.message()))?;
        Ok(took)
    }
}

pub fn run(o: &Opts) -> Result<Section> {
    let pods = if o.quick { 4 } else { 40 };
    eprintln!("bench-report: pod start through CRI, {pods} pods per side");
    let ours_node = LoneNode::new(3);
    let ours = Side {
        ctd: Containerd::start(
            &ours_node.netns().path(),
            &kube_flannel_conflist(&ours_node.plugin_conf()),
            &kube_flannel_plugins(),
        ),
        _node: ours_node,
    };
    let ref_node = LoneNode::new(3);
    let reference = Side {
        ctd: Containerd::start(
            &ref_node.netns().path(),
            &reference_conflist(&ref_node),
            &reference_plugins(),
        ),
        _node: ref_node,
    };
    // Warm-up: the first pod creates cni0; caches.
    for side in [&ours, &reference] {
        side.start_one("warm")?;
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..pods {
        let name = format!("pod{i}");
        if i % 2 == 0 {
            a.push(ours.start_one(&name)?);
            b.push(reference.start_one(&name)?);
        } else {
            b.push(reference.start_one(&name)?);
            a.push(ours.start_one(&name)?);
        }
    }
    section(o, &a, &b, pods)
}

fn section(o: &Opts, ours: &[f64], reference: &[f64], pods: usize) -> Result<Section> {
    let mut s = Section::new(
        "Pod start through CRI",
        &format!(
            "kubelet's path: Debian's containerd (CRI plugin, runc) inside a node namespace, \
             driven over its CRI socket with the requests kubelet sends. The time runs from \
             `RunPodSandbox` sent until it returned with the sandbox ready (network included), \
             {pods} pods per side, interleaved, each removed before the next. Ours: \
             kube-flannel's conflist (flannel, portmap); reference: Debian's bridge + \
             host-local (+ portmap) with the same subnet. The sandbox's own start (runc, a \
             busybox pause) is in both."
        ),
    );
    let (q, r) = (quantiles(ours), quantiles(reference));
    let mut table = Table::versus_reference();
    table.compare("RunPodSandbox → ready", &q, &r);
    s.tables.push(table);
    let file = "pod_start.svg";
    let panel = CdfPanel {
        title: "RunPodSandbox → sandbox ready (containerd CRI)".to_string(),
        x_label: "ms (log scale)".to_string(),
        series: vec![
            Series::new("ours (kube-flannel conflist)", ours),
            Series::new("reference (bridge + host-local)", reference),
        ],
    };
    cdfs(&o.out.join(file), &[panel])?;
    s.plots.push((
        file.to_string(),
        "Pod start time through CRI, CDF".to_string(),
    ));
    s.data = json!({"ours_ms": ours, "reference_ms": reference});
    Ok(s)
}
