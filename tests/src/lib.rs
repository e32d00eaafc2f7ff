//! Multi-node test harness.
//!
//! Nodes are network namespaces on one machine: an underlay namespace holds a
//! bridge, every node is a namespace with an `eth0` veth into that bridge, a
//! real etcd runs on the underlay, and flanneld and the CNI plugin run inside
//! each node. Everything a test creates is named uniquely (see [`unique`]) and
//! removed by `Drop` guards, pass or fail.
//!
//! The building blocks ([`Netns`], [`Proc`], [`TempDir`], [`Etcd`],
//! [`Monitor`], [`Containerd`] with its [`Cri`] client, the Kubernetes API
//! emulator [`KubeApi`]) are usable on their own, e.g. by a crate's root
//! integration tests; [`Cluster`] puts them together. Every test that needs root starts
//! with [`require_root!`], every wait is a [`wait_until`].

mod check;
mod cluster;
mod cmd;
mod containerd;
pub mod cri;
mod etcd;
pub mod http;
pub mod kube;
mod monitor;
mod netns;
mod node;
mod pod;
mod podman;
mod proc;
pub mod root;
mod subnet_env;
mod tempdir;
mod tls;
mod wait;

pub use check::{ping_matrix, udp_source_seen, PingResult};
pub use cluster::{
    sweep_stale, teardown, Cluster, ClusterOpts, External, KeptCluster, KEPT_STATE, UNDERLAY_IP,
};
pub use cmd::{bin_path, run, sh, unique};
pub use containerd::{
    kube_flannel_conflist, kube_flannel_plugins, Containerd, LoneNode, BUSYBOX_IMAGE, PAUSE_IMAGE,
};
pub use cri::{Cri, ExecOutput, PodMeta};
pub use etcd::{Etcd, EtcdError, EtcdTls, Kv};
pub use kube::{KubeApi, KubeApiConfig, Restart, KUBE_API_PORT};
pub use monitor::Monitor;
pub use netns::{run_in_netns, Netns};
pub use node::{Node, HEALTHZ_PORT};
pub use pod::{exec_plugin, result_ip, CniExec, Pod};
pub use podman::Podman;
pub use proc::{let_children_outlive_us, Proc};
pub use root::root_or_skip;
pub use subnet_env::{network_of, split_cidr, SubnetEnv};
pub use tempdir::TempDir;
pub use tls::Pki;
pub use wait::{try_wait_until, wait_until};
