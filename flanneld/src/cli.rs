//! Command line: flannel's flag names, each also settable through a
//! `FLANNELD_<NAME>` environment variable (dashes become underscores), as
//! flannel's `flagutil.SetFlagsFromEnv` does. A flag given on the command
//! line wins over the environment.
//!
//! clap parses; a small shim in front of it keeps Go's `flag` conventions
//! that existing unit files and manifests use: one dash for long flags
//! (`-etcd-endpoints=x`, `-iface eth0`, `-v=2`). The environment comes in
//! as a map (the process's in `main`, a test's own in tests) and is turned
//! into flags for what the command line leaves unset, so clap never reads
//! the process environment itself; its `env` attributes only document the
//! variables in `--help`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, ValueEnum};

pub use crate::log::LogFormat;
pub use crate::masq::FirewallChoice;

/// Bad flags or values; the text names the flag and the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct CliError(String);

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Options),
    Status(Options),
    Help,
    Version,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    pub etcd_cafile: Option<PathBuf>,
    pub etcd_certfile: Option<PathBuf>,
    pub etcd_keyfile: Option<PathBuf>,
    pub etcd_username: Option<String>,
    pub etcd_password: Option<String>,
    pub iface: Vec<String>,
    pub public_ip: Option<Ipv4Addr>,
    pub subnet_file: PathBuf,
    pub renew_margin: Duration,
    pub ip_masq: bool,
    pub iptables_forward_rules: bool,
    pub iptables_resync: Duration,
    pub firewall: FirewallChoice,
    pub healthz_ip: IpAddr,
    pub healthz_port: u16,
    pub resync_interval: Duration,
    pub graceful_leave: bool,
    pub verbosity: u32,
    pub log_format: LogFormat,
    pub ipam_dir: PathBuf,
    /// Zero: no reclaim.
    pub ipam_reclaim_grace: Duration,
    pub cni_data_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Verb {
    Run,
    Status,
}

/// Every flag, with the default shown by `--help` and documented in README.md.
#[derive(Debug, Parser)]
#[command(
    name = "flanneld",
    version,
    about = "Flannel-compatible node daemon: etcd subnet leases and a self-healing VXLAN datapath",
    override_usage = "flanneld [OPTIONS] [run]\n       flanneld status [OPTIONS]",
    after_help = "Long flags also take one dash (-ip-masq) and a value after `=` or as the \
                  next argument. Every flag can be set through its FLANNELD_<NAME> \
                  environment variable; the command line wins.",
    args_override_self = true
)]
struct Args {
    /// run (the default): the daemon; status: show this node's lease, peers and pods
    #[arg(
        value_enum,
        value_name = "COMMAND",
        default_value_t = Verb::Run,
        hide_default_value = true
    )]
    verb: Verb,
    /// comma-separated etcd endpoints
    #[arg(
        long,
        env = "FLANNELD_ETCD_ENDPOINTS",
        value_name = "URLS",
        default_value = "http://127.0.0.1:2379",
        value_parser = endpoints
    )]
    etcd_endpoints: Endpoints,
    /// etcd prefix of the network config and leases
    #[arg(
        long,
        env = "FLANNELD_ETCD_PREFIX",
        value_name = "PREFIX",
        default_value = "/coreos.com/network"
    )]
    etcd_prefix: String,
    /// CA certificate to verify etcd (TLS)
    #[arg(long, env = "FLANNELD_ETCD_CAFILE", value_name = "FILE")]
    etcd_cafile: Option<String>,
    /// client certificate for etcd (TLS)
    #[arg(long, env = "FLANNELD_ETCD_CERTFILE", value_name = "FILE")]
    etcd_certfile: Option<String>,
    /// client key for etcd (TLS)
    #[arg(long, env = "FLANNELD_ETCD_KEYFILE", value_name = "FILE")]
    etcd_keyfile: Option<String>,
    /// username for etcd authentication
    #[arg(long, env = "FLANNELD_ETCD_USERNAME", value_name = "USER")]
    etcd_username: Option<String>,
    /// password for etcd authentication
    #[arg(long, env = "FLANNELD_ETCD_PASSWORD", value_name = "PASSWORD")]
    etcd_password: Option<String>,
    /// interface (name or IP) for inter-host traffic; repeat to try several in order
    #[arg(long, env = "FLANNELD_IFACE", value_name = "IFACE")]
    iface: Vec<String>,
    /// IP other nodes use to reach this one (default: the interface's address)
    #[arg(long, env = "FLANNELD_PUBLIC_IP", value_name = "IP", value_parser = ipv4_or_empty)]
    public_ip: Option<String>,
    /// where to write subnet.env
    #[arg(
        long,
        env = "FLANNELD_SUBNET_FILE",
        value_name = "FILE",
        default_value = subnet_env::DEFAULT_PATH
    )]
    subnet_file: PathBuf,
    /// renew the lease this many minutes before it expires (1-1439)
    #[arg(
        long = "subnet-lease-renew-margin",
        env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN",
        value_name = "MINUTES",
        default_value = "60",
        value_parser = renew_margin
    )]
    renew_margin: Duration,
    /// masquerade traffic leaving the cluster network
    #[arg(
        long,
        env = "FLANNELD_IP_MASQ",
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value = "false",
        default_missing_value = "true",
        value_parser = go_bool
    )]
    ip_masq: bool,
    /// add FORWARD accept rules for the cluster network
    #[arg(
        long,
        env = "FLANNELD_IPTABLES_FORWARD_RULES",
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value = "true",
        default_missing_value = "true",
        value_parser = go_bool
    )]
    iptables_forward_rules: bool,
    /// seconds between firewall rule checks
    #[arg(
        long,
        env = "FLANNELD_IPTABLES_RESYNC",
        value_name = "SECONDS",
        default_value = "5",
        value_parser = seconds
    )]
    iptables_resync: Duration,
    /// where the masquerade and forward rules go: nftables (flannel's
    /// tables flannel-ipv4), iptables (flannel's FLANNEL-* chains), or auto
    #[arg(
        long,
        env = "FLANNELD_FIREWALL",
        value_name = "FIREWALL",
        value_enum,
        default_value_t = FirewallChoice::Auto
    )]
    firewall: FirewallChoice,
    /// address of the /healthz, /readyz and /metrics server
    #[arg(
        long,
        env = "FLANNELD_HEALTHZ_IP",
        value_name = "IP",
        default_value = "0.0.0.0",
        value_parser = trimmed::<IpAddr>
    )]
    healthz_ip: IpAddr,
    /// port of that server (0 disables it)
    #[arg(
        long,
        env = "FLANNELD_HEALTHZ_PORT",
        value_name = "PORT",
        default_value = "0",
        value_parser = trimmed::<u16>
    )]
    healthz_port: u16,
    /// seconds between full datapath reconciles
    #[arg(
        long,
        env = "FLANNELD_RESYNC_INTERVAL",
        value_name = "SECONDS",
        default_value = "15",
        value_parser = seconds
    )]
    resync_interval: Duration,
    /// revoke this node's lease on shutdown so peers drop it at once
    #[arg(
        long,
        env = "FLANNELD_GRACEFUL_LEAVE",
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value = "false",
        default_missing_value = "true",
        value_parser = go_bool
    )]
    graceful_leave: bool,
    /// host-local IPAM stores (one directory per network): status lists pods from them, the daemon reclaims the IPs of pods that are gone
    #[arg(
        long,
        env = "FLANNELD_IPAM_DIR",
        value_name = "DIR",
        default_value = "/var/lib/cni/networks"
    )]
    ipam_dir: PathBuf,
    /// reclaim the IP of a pod whose host veth has been gone this long (e.g. 60s, 5m; 0 disables)
    #[arg(
        long,
        env = "FLANNELD_IPAM_RECLAIM_GRACE",
        value_name = "DURATION",
        default_value = "60s",
        value_parser = duration
    )]
    ipam_reclaim_grace: Duration,
    /// the CNI plugin's dataDir (its saved per-pod configs, removed with a reclaimed IP)
    #[arg(
        long,
        env = "FLANNELD_CNI_DATA_DIR",
        value_name = "DIR",
        default_value = "/var/lib/cni/flannel"
    )]
    cni_data_dir: PathBuf,
    /// log verbosity (0: info; 1: debug; 2: trace, and the libraries' info; 3, 4: their debug, trace)
    #[arg(
        short = 'v',
        long = "v",
        env = "FLANNELD_V",
        value_name = "LEVEL",
        default_value = "0",
        value_parser = trimmed::<u32>
    )]
    verbosity: u32,
    /// log line format
    #[arg(
        long,
        env = "FLANNELD_LOG_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
}

/// Parses `args` (without the program name) and the environment `env`.
pub fn parse<I, S>(args: I, env: &HashMap<String, String>) -> Result<Command, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let cmd = command().mut_args(|a| a.env(None));
    let args = with_env(&cmd, go_style(&cmd, args.into_iter().map(Into::into)), env);
    let matches = match cmd.try_get_matches_from(std::iter::once("flanneld".into()).chain(args)) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::DisplayHelp => return Ok(Command::Help),
        Err(e) if e.kind() == ErrorKind::DisplayVersion => return Ok(Command::Version),
        Err(e) => return Err(cli_error(&e)),
    };
    let parsed = Args::from_arg_matches(&matches).map_err(|e| cli_error(&e))?;
    let verb = parsed.verb;
    let opts = parsed.into_options();
    Ok(match verb {
        Verb::Run => Command::Run(opts),
        Verb::Status => Command::Status(opts),
    })
}

/// The text of `--help`.
pub fn usage() -> String {
    command().render_help().to_string()
}

fn command() -> clap::Command {
    Args::command().mut_args(|a| {
        // Like Go's `flag`, a flag's value is the next argument, whatever it
        // looks like.
        let separate = a.get_action().takes_values() && !a.is_require_equals_set();
        let a = if separate && !a.is_positional() {
            a.allow_hyphen_values(true)
        } else {
            a
        };
        // Values from the environment could be secrets (the etcd password).
        a.hide_env_values(true)
    })
}

/// clap's message without its `error: ` prefix (main prefixes the program).
fn cli_error(e: &clap::Error) -> CliError {
    let text = e.render().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    CliError(text.trim_end().to_owned())
}

/// The long flags of `cmd` that take their value from the next argument
/// when none follows `=`.
fn separate_value_flags(cmd: &clap::Command) -> HashSet<String> {
    cmd.get_arguments()
        .filter(|a| a.get_action().takes_values() && !a.is_require_equals_set())
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect()
}

/// Go's `flag` takes long flags with one dash: `-iface eth0` becomes
/// `--iface eth0` and `-v=2` `--v=2`. Other one-letter flags (`-h`, `-V`)
/// stay as they are; values and everything after `--` are left alone.
fn go_style(cmd: &clap::Command, mut args: impl Iterator<Item = String>) -> Vec<String> {
    let takes_next = separate_value_flags(cmd);
    let mut out = Vec::new();
    while let Some(mut arg) = args.next() {
        if arg == "--" {
            out.push(arg);
            out.extend(args.by_ref());
            break;
        }
        if let Some(body) = arg.strip_prefix('-').filter(|b| !b.starts_with('-')) {
            let name = body.split('=').next().unwrap_or_default();
            if name.len() > 1 || name == "v" {
                arg.insert(0, '-');
            }
        }
        let value_follows = arg
            .strip_prefix("--")
            .is_some_and(|name| !name.contains('=') && takes_next.contains(name));
        out.push(arg);
        if value_follows {
            out.extend(args.next());
        }
    }
    out
}

/// `args` with `--name=value` in front for each `FLANNELD_<NAME>` that is
/// set, not empty, and whose flag the command line does not give.
/// `FLANNELD_IFACE` is comma-separated.
fn with_env(cmd: &clap::Command, args: Vec<String>, env: &HashMap<String, String>) -> Vec<String> {
    let takes_next = separate_value_flags(cmd);
    let given = given_flags(&args, &takes_next);
    let mut from_env = Vec::new();
    for long in cmd.get_arguments().filter_map(|a| a.get_long()) {
        if given.contains(long) || long == "help" || long == "version" {
            continue;
        }
        let key = format!("FLANNELD_{}", long.to_uppercase().replace('-', "_"));
        let Some(value) = env.get(&key).filter(|v| !v.is_empty()) else {
            continue;
        };
        let values: Vec<&str> = match long {
            "iface" => value
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect(),
            _ => vec![value.as_str()],
        };
        from_env.extend(values.into_iter().map(|v| format!("--{long}={v}")));
    }
    from_env.extend(args);
    from_env
}

/// The long flags on a (go_style-normalised) command line.
fn given_flags(args: &[String], takes_next: &HashSet<String>) -> HashSet<String> {
    let mut given = HashSet::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        let Some(body) = arg.strip_prefix("--") else {
            continue;
        };
        let (name, inline) = body
            .split_once('=')
            .map_or((body, false), |(n, _)| (n, true));
        if !inline && takes_next.contains(name) {
            args.next();
        }
        given.insert(name.to_owned());
    }
    given
}

impl Args {
    fn into_options(self) -> Options {
        let non_empty = |v: Option<String>| v.filter(|v| !v.is_empty());
        Options {
            etcd_endpoints: self.etcd_endpoints.0,
            etcd_prefix: self.etcd_prefix.trim_end_matches('/').to_owned(),
            etcd_cafile: non_empty(self.etcd_cafile).map(PathBuf::from),
            etcd_certfile: non_empty(self.etcd_certfile).map(PathBuf::from),
            etcd_keyfile: non_empty(self.etcd_keyfile).map(PathBuf::from),
            etcd_username: non_empty(self.etcd_username),
            etcd_password: non_empty(self.etcd_password),
            iface: self.iface,
            // Checked by ipv4_or_empty.
            public_ip: non_empty(self.public_ip).and_then(|v| v.trim().parse().ok()),
            subnet_file: self.subnet_file,
            renew_margin: self.renew_margin,
            ip_masq: self.ip_masq,
            iptables_forward_rules: self.iptables_forward_rules,
            iptables_resync: self.iptables_resync,
            firewall: self.firewall,
            healthz_ip: self.healthz_ip,
            healthz_port: self.healthz_port,
            resync_interval: self.resync_interval,
            graceful_leave: self.graceful_leave,
            verbosity: self.verbosity,
            log_format: self.log_format,
            ipam_dir: self.ipam_dir,
            ipam_reclaim_grace: self.ipam_reclaim_grace,
            cni_data_dir: self.cni_data_dir,
        }
    }
}

#[derive(Debug, Clone)]
struct Endpoints(Vec<String>);

fn endpoints(v: &str) -> Result<Endpoints, String> {
    let list: Vec<String> = v
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if list.is_empty() {
        return Err("at least one endpoint is needed".into());
    }
    Ok(Endpoints(list))
}

fn trimmed<T: FromStr>(v: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    v.trim().parse().map_err(|e: T::Err| e.to_string())
}

/// Go's `strconv.ParseBool`, which flannel's boolean flags go through.
fn go_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" | "1" | "t" | "T" | "TRUE" | "True" => Ok(true),
        "false" | "0" | "f" | "F" | "FALSE" | "False" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// An IPv4 address, or empty for "not set".
fn ipv4_or_empty(v: &str) -> Result<String, String> {
    if !v.trim().is_empty() {
        trimmed::<Ipv4Addr>(v)?;
    }
    Ok(v.to_owned())
}

fn seconds(v: &str) -> Result<Duration, String> {
    match trimmed::<u64>(v)? {
        0 => Err("must be at least 1".into()),
        secs => Ok(Duration::from_secs(secs)),
    }
}

/// A duration as Go's `time.ParseDuration` reads it (`60s`, `1m30s`,
/// `500ms`, `1.5h`; units ns, us, µs, ms, s, m, h), or a bare number of
/// seconds like the other flags.
pub fn duration(v: &str) -> Result<Duration, String> {
    let text = v.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let bad = || format!("{text:?} is not a duration (e.g. 60s, 5m, 1m30s, 500ms)");
    // Nanoseconds, rounded once at the end, so 250ms is exactly 0.25 s.
    let (mut rest, mut nanos) = (text, 0f64);
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let is_num = |c: char| c.is_ascii_digit() || c == '.';
        let num_end = rest.find(|c| !is_num(c)).ok_or_else(bad)?;
        let (num, after) = rest.split_at(num_end);
        let (unit, next) = after.split_at(after.find(is_num).unwrap_or(after.len()));
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        nanos += num.parse::<f64>().map_err(|_| bad())? * scale;
        rest = next;
    }
    if !(0.0..u64::MAX as f64).contains(&nanos.round()) {
        return Err(bad());
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

fn renew_margin(v: &str) -> Result<Duration, String> {
    match trimmed::<u64>(v)? {
        m @ 1..=1439 => Ok(Duration::from_secs(m * 60)),
        _ => Err("must be between 1 and 1439 minutes".into()),
    }
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
