//! The report never rots: `bench-report --quick` runs every benchmark with
//! small counts and writes the summary, the plots and the raw data.

use std::process::Command;

use harness::{require_root, TempDir};

#[test]
fn quick_report_has_every_section_plot_and_row() {
    require_root!();
    let dir = TempDir::new("fl-proc");
    let out = Command::new(env!("CARGO_BIN_EXE_bench-report"))
        .arg("--out")
        .arg(dir.path())
        .arg("--quick")
        .output()
        .expect("run bench-report");
    assert!(
        out.status.success(),
        "bench-report failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for svg in [
        "cni_latency.svg",
        "peer_programming.svg",
        "flanneld_rss.svg",
        "join_latency_cdf.svg",
        "throughput.svg",
        "pod_start.svg",
    ] {
        let text = std::fs::read_to_string(dir.join(svg)).unwrap_or_else(|e| panic!("{svg}: {e}"));
        assert!(
            text.starts_with("<svg") && text.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        assert!(
            text.contains("<polyline") || text.contains("<rect"),
            "{svg} draws nothing"
        );
    }
    let summary = std::fs::read_to_string(dir.join("summary.md")).expect("summary.md");
    for row in [
        "| CNI ADD (wall) |",
        "| CNI DEL (wall) |",
        "| 100 peers |",
        "| 300 peers |",
        "| flanneld RSS, 100 peers |",
        "| join → programmed on a peer |",
        "| pod ↔ pod (vxlan) |",
        "| underlay, node ↔ node (vxlan cluster) |",
        "| pod ↔ pod (host-gw) | not measured",
        "| RunPodSandbox → ready |",
    ] {
        assert!(
            summary.contains(row),
            "summary.md lacks {row:?}:\n{summary}"
        );
    }
    // Every measured row holds numbers (a missing series prints "–").
    let measured = summary
        .lines()
        .filter(|l| l.starts_with("| ") && !l.contains("not measured"));
    for line in measured {
        assert!(!line.contains("NaN") && !line.contains("| – |"), "{line}");
    }
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("data.json")).unwrap()).unwrap();
    let joins = data["Join latency"]["join_ms"]
        .as_array()
        .expect("join samples");
    assert_eq!(joins.len(), 5 * 3, "5 joins seen by 3 nodes");
}
