//! `kube-api-emulator --listen ADDR:PORT --kubeconfig PATH`: a Kubernetes
//! API server for Nodes (see `harness::kube`), serving over TLS with a
//! bearer token until SIGTERM or SIGINT. It writes a kubeconfig for itself
//! (server URL, CA, token); kubectl, flanneld or any client can use it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use harness::kube::{KubeApi, KubeApiConfig};

#[derive(Parser, Debug)]
#[command(
    name = "kube-api-emulator",
    about = "A Kubernetes API server emulator for the Node resource"
)]
struct Args {
    /// Address and port to serve on, e.g. 127.0.0.1:6443.
    #[arg(long)]
    listen: SocketAddr,
    /// Where to write the kubeconfig for this server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Address clients connect to (kubeconfig server, certificate name);
    /// the listen address by default.
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// Directory for the CA and server certificate [default: beside the
    /// kubeconfig, in kube-api-emulator-pki/].
    #[arg(long)]
    pki_dir: Option<PathBuf>,
    /// The bearer token clients must send [default: random, see the
    /// kubeconfig].
    #[arg(long, env = "KUBE_API_EMULATOR_TOKEN")]
    token: Option<String>,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 5)]
    bookmark_interval: u64,
    /// Print every request on stderr.
    #[arg(long, short)]
    verbose: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("kube-api-emulator: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    if args.listen.ip().is_unspecified() && args.advertise_address.is_none() {
        anyhow::bail!(
            "listening on {} needs --advertise-address (the address clients use)",
            args.listen
        );
    }
    // Blocked before any thread starts, so every thread inherits the mask
    // and the signals wait for sigwait below.
    let signals = block_signals()?;
    let kube_dir = args
        .kubeconfig
        .parent()
        .filter(|p| !p.as_os_str().is_empty());
    let dir = match args.pki_dir {
        Some(dir) => dir,
        None => kube_dir
            .unwrap_or(std::path::Path::new("."))
            .join("kube-api-emulator-pki"),
    };
    let config = KubeApiConfig {
        listen: args.listen,
        netns: None,
        advertise: args.advertise_address,
        dir,
        kubeconfig: Some(args.kubeconfig.clone()),
        token: args.token,
        bookmark_interval: Duration::from_secs(args.bookmark_interval.max(1)),
        log_requests: args.verbose,
    };
    let api = KubeApi::start(config).context("cannot start")?;
    eprintln!(
        "kube-api-emulator: serving {} (kubeconfig {})",
        api.url(),
        args.kubeconfig.display()
    );
    let sig = wait_for(&signals)?;
    eprintln!("kube-api-emulator: signal {sig}, stopping");
    drop(api);
    Ok(())
}

fn block_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before
    // use; pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc)).context("cannot block signals");
        }
        Ok(set)
    }
}

fn wait_for(set: &libc::sigset_t) -> Result<libc::c_int> {
    let mut sig = 0;
    // SAFETY: `set` is an initialised signal set and `sig` a valid out
    // pointer for the call's duration.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc)).context("sigwait");
    }
    Ok(sig)
}
