//! Command line: flannel's flag names, each also settable through a
//! `FLANNELD_<NAME>` environment variable (dashes become underscores), as
//! flannel's `flagutil.SetFlagsFromEnv` does. A flag given on the command
//! line wins over the environment.
//!
//! Flags take one or two dashes and `=value` or a separate argument, like
//! Go's `flag` package, so existing unit files and manifests keep working.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("unknown flag {0:?} (see --help)")]
    Unknown(String),
    #[error("flag --{0} needs a value")]
    MissingValue(&'static str),
    #[error("invalid value {value:?} for --{flag}: {why}")]
    Invalid {
        flag: &'static str,
        value: String,
        why: String,
    },
    #[error("unexpected argument {0:?}")]
    Positional(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Value,
    /// May be given several times (`--iface`).
    Multi,
}

struct Spec {
    name: &'static str,
    kind: Kind,
    default: &'static str,
    help: &'static str,
}

const fn spec(name: &'static str, kind: Kind, default: &'static str, help: &'static str) -> Spec {
    Spec {
        name,
        kind,
        default,
        help,
    }
}

/// Every flag, with the default shown by `--help` and documented in README.md.
const SPECS: &[Spec] = &[
    spec(
        "etcd-endpoints",
        Kind::Value,
        "http://127.0.0.1:2379",
        "comma-separated etcd endpoints",
    ),
    spec(
        "etcd-prefix",
        Kind::Value,
        "/coreos.com/network",
        "etcd prefix of the network config and leases",
    ),
    spec(
        "etcd-cafile",
        Kind::Value,
        "",
        "CA certificate to verify etcd (TLS)",
    ),
    spec(
        "etcd-certfile",
        Kind::Value,
        "",
        "client certificate for etcd (TLS)",
    ),
    spec("etcd-keyfile", Kind::Value, "", "client key for etcd (TLS)"),
    spec(
        "etcd-username",
        Kind::Value,
        "",
        "username for etcd authentication",
    ),
    spec(
        "etcd-password",
        Kind::Value,
        "",
        "password for etcd authentication",
    ),
    spec(
        "iface",
        Kind::Multi,
        "",
        "interface (name or IP) for inter-host traffic; repeat to try several in order",
    ),
    spec(
        "public-ip",
        Kind::Value,
        "",
        "IP other nodes use to reach this one (default: the interface's address)",
    ),
    spec(
        "subnet-file",
        Kind::Value,
        subnet_env::DEFAULT_PATH,
        "where to write subnet.env",
    ),
    spec(
        "subnet-lease-renew-margin",
        Kind::Value,
        "60",
        "renew the lease this many minutes before it expires (1-1439)",
    ),
    spec(
        "ip-masq",
        Kind::Bool,
        "false",
        "masquerade traffic leaving the cluster network",
    ),
    spec(
        "iptables-forward-rules",
        Kind::Bool,
        "true",
        "add FORWARD accept rules for the cluster network",
    ),
    spec(
        "iptables-resync",
        Kind::Value,
        "5",
        "seconds between firewall rule checks",
    ),
    spec(
        "healthz-ip",
        Kind::Value,
        "0.0.0.0",
        "address of the /healthz, /readyz and /metrics server",
    ),
    spec(
        "healthz-port",
        Kind::Value,
        "0",
        "port of that server (0 disables it)",
    ),
    spec(
        "resync-interval",
        Kind::Value,
        "15",
        "seconds between full datapath reconciles",
    ),
    spec(
        "graceful-leave",
        Kind::Bool,
        "false",
        "revoke this node's lease on shutdown so peers drop it at once",
    ),
    spec(
        "ipam-dir",
        Kind::Value,
        "/var/lib/cni/networks",
        "status: host-local IPAM stores to list pods from",
    ),
    spec("v", Kind::Value, "0", "log verbosity (0: info; 1+: debug)"),
    spec("help", Kind::Bool, "false", "print this help"),
    spec("version", Kind::Bool, "false", "print the version"),
];

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
    pub healthz_ip: IpAddr,
    pub healthz_port: u16,
    pub resync_interval: Duration,
    pub graceful_leave: bool,
    pub verbosity: u32,
    pub ipam_dir: PathBuf,
}

/// Parses `args` (without the program name) and the environment `env`.
pub fn parse<I, S>(args: I, env: &HashMap<String, String>) -> Result<Command, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let (mut given, positional) = scan(args.into_iter().map(Into::into))?;
    if flag_true(&given, "help")? {
        return Ok(Command::Help);
    }
    if flag_true(&given, "version")? {
        return Ok(Command::Version);
    }
    apply_env(&mut given, env);
    let opts = build(&given)?;
    match positional.as_deref() {
        None | Some("run") => Ok(Command::Run(opts)),
        Some("status") => Ok(Command::Status(opts)),
        Some(other) => Err(CliError::Positional(other.to_owned())),
    }
}

type Given = HashMap<&'static str, Vec<String>>;

/// Splits the arguments into flag values and at most one subcommand.
fn scan(mut args: impl Iterator<Item = String>) -> Result<(Given, Option<String>), CliError> {
    let mut given = Given::new();
    let mut positional = None;
    while let Some(arg) = args.next() {
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            if positional.is_some() {
                return Err(CliError::Positional(arg));
            }
            positional = Some(arg);
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        let spec = SPECS
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| CliError::Unknown(arg.clone()))?;
        let value = match (inline, spec.kind) {
            (Some(v), _) => v,
            (None, Kind::Bool) => "true".to_owned(),
            (None, _) => args.next().ok_or(CliError::MissingValue(spec.name))?,
        };
        given.entry(spec.name).or_default().push(value);
    }
    Ok((given, positional))
}

/// Fills flags not given on the command line from `FLANNELD_<NAME>`.
fn apply_env(given: &mut Given, env: &HashMap<String, String>) {
    for spec in SPECS {
        if given.contains_key(spec.name) {
            continue;
        }
        let key = format!("FLANNELD_{}", spec.name.to_uppercase().replace('-', "_"));
        if let Some(v) = env.get(&key).filter(|v| !v.is_empty()) {
            let values = match spec.kind {
                Kind::Multi => v.split(',').map(|s| s.trim().to_owned()).collect(),
                _ => vec![v.clone()],
            };
            given.insert(spec.name, values);
        }
    }
}

fn raw<'a>(given: &'a Given, name: &'static str) -> &'a str {
    match given.get(name).and_then(|v| v.last()) {
        Some(v) => v,
        None => SPECS
            .iter()
            .find(|s| s.name == name)
            .map_or("", |s| s.default),
    }
}

fn invalid(flag: &'static str, value: &str, why: impl ToString) -> CliError {
    CliError::Invalid {
        flag,
        value: value.to_owned(),
        why: why.to_string(),
    }
}

fn typed<T: std::str::FromStr>(given: &Given, name: &'static str) -> Result<T, CliError>
where
    T::Err: std::fmt::Display,
{
    let v = raw(given, name);
    v.trim().parse().map_err(|e| invalid(name, v, e))
}

fn flag_true(given: &Given, name: &'static str) -> Result<bool, CliError> {
    match raw(given, name) {
        "true" | "1" | "t" | "T" | "TRUE" | "True" => Ok(true),
        "false" | "0" | "f" | "F" | "FALSE" | "False" => Ok(false),
        other => Err(invalid(name, other, "expected true or false")),
    }
}

fn optional(given: &Given, name: &'static str) -> Option<String> {
    Some(raw(given, name).to_owned()).filter(|v| !v.is_empty())
}

fn seconds(given: &Given, name: &'static str) -> Result<Duration, CliError> {
    let secs: u64 = typed(given, name)?;
    if secs == 0 {
        return Err(invalid(name, raw(given, name), "must be at least 1"));
    }
    Ok(Duration::from_secs(secs))
}

fn build(given: &Given) -> Result<Options, CliError> {
    let margin: u64 = typed(given, "subnet-lease-renew-margin")?;
    if !(1..24 * 60).contains(&margin) {
        let v = raw(given, "subnet-lease-renew-margin");
        return Err(invalid(
            "subnet-lease-renew-margin",
            v,
            "must be between 1 and 1439 minutes",
        ));
    }
    let endpoints: Vec<String> = raw(given, "etcd-endpoints")
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(invalid(
            "etcd-endpoints",
            "",
            "at least one endpoint is needed",
        ));
    }
    let public_ip = match optional(given, "public-ip") {
        Some(v) => Some(v.parse().map_err(|e| invalid("public-ip", &v, e))?),
        None => None,
    };
    Ok(Options {
        etcd_endpoints: endpoints,
        etcd_prefix: raw(given, "etcd-prefix").trim_end_matches('/').to_owned(),
        etcd_cafile: optional(given, "etcd-cafile").map(PathBuf::from),
        etcd_certfile: optional(given, "etcd-certfile").map(PathBuf::from),
        etcd_keyfile: optional(given, "etcd-keyfile").map(PathBuf::from),
        etcd_username: optional(given, "etcd-username"),
        etcd_password: optional(given, "etcd-password"),
        iface: given.get("iface").cloned().unwrap_or_default(),
        public_ip,
        subnet_file: PathBuf::from(raw(given, "subnet-file")),
        renew_margin: Duration::from_secs(margin * 60),
        ip_masq: flag_true(given, "ip-masq")?,
        iptables_forward_rules: flag_true(given, "iptables-forward-rules")?,
        iptables_resync: seconds(given, "iptables-resync")?,
        healthz_ip: typed(given, "healthz-ip")?,
        healthz_port: typed(given, "healthz-port")?,
        resync_interval: seconds(given, "resync-interval")?,
        graceful_leave: flag_true(given, "graceful-leave")?,
        verbosity: typed(given, "v")?,
        ipam_dir: PathBuf::from(raw(given, "ipam-dir")),
    })
}

/// The text of `--help`.
pub fn usage() -> String {
    let mut out = String::from(
        "Usage: flanneld [OPTION]...          run the daemon\n       \
         flanneld status [OPTION]...   show this node's lease, peers and pods\n\nOptions \
         (each also as FLANNELD_<NAME>, e.g. FLANNELD_ETCD_ENDPOINTS):\n",
    );
    for s in SPECS {
        let arg = match s.kind {
            Kind::Bool => String::new(),
            _ => "=VALUE".to_owned(),
        };
        let default = match s.default {
            "" => String::new(),
            d => format!(" (default {d})"),
        };
        out.push_str(&format!("  --{}{arg}\n      {}{default}\n", s.name, s.help));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Options {
        match parse(args.iter().copied(), &HashMap::new()).unwrap() {
            Command::Run(o) => o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_are_flannels() {
        let o = run(&[]);
        assert_eq!(o.etcd_endpoints, vec!["http://127.0.0.1:2379"]);
        assert_eq!(o.etcd_prefix, "/coreos.com/network");
        assert_eq!(o.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(o.renew_margin, Duration::from_secs(3600));
        assert!(!o.ip_masq && o.iptables_forward_rules && !o.graceful_leave);
        assert_eq!(o.healthz_port, 0);
        assert_eq!(o.healthz_ip.to_string(), "0.0.0.0");
    }

    #[test]
    fn go_style_flags_are_accepted() {
        let o = run(&[
            "-etcd-endpoints=http://a:1,http://b:2",
            "--iface",
            "eth1",
            "--iface=10.0.0.1",
            "--ip-masq",
            "-iptables-forward-rules=false",
            "-v=2",
            "--public-ip",
            "192.0.2.1",
        ]);
        assert_eq!(o.etcd_endpoints, vec!["http://a:1", "http://b:2"]);
        assert_eq!(o.iface, vec!["eth1", "10.0.0.1"]);
        assert!(o.ip_masq && !o.iptables_forward_rules);
        assert_eq!(o.verbosity, 2);
        assert_eq!(o.public_ip, Some("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn environment_fills_unset_flags_only() {
        let env: HashMap<String, String> = [
            ("FLANNELD_ETCD_PREFIX", "/x/network"),
            ("FLANNELD_IP_MASQ", "true"),
            ("FLANNELD_HEALTHZ_PORT", "8471"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let Command::Run(o) = parse(["--healthz-port=9000"], &env).unwrap() else {
            panic!()
        };
        assert_eq!(o.etcd_prefix, "/x/network");
        assert!(o.ip_masq);
        assert_eq!(o.healthz_port, 9000);
    }

    #[test]
    fn status_subcommand_and_errors() {
        let env = HashMap::new();
        assert!(matches!(
            parse(["status", "-v=1"], &env),
            Ok(Command::Status(_))
        ));
        assert_eq!(parse(["--help"], &env), Ok(Command::Help));
        assert_eq!(
            parse(["--bogus"], &env),
            Err(CliError::Unknown("--bogus".into()))
        );
        assert_eq!(
            parse(["--iface"], &env),
            Err(CliError::MissingValue("iface"))
        );
        let err = parse(["--subnet-lease-renew-margin=1440"], &env).unwrap_err();
        assert!(
            err.to_string().contains("subnet-lease-renew-margin"),
            "{err}"
        );
        let err = parse(["--public-ip=nope"], &env).unwrap_err();
        assert!(err.to_string().contains("--public-ip"), "{err}");
        assert!(parse(["status", "extra"], &env).is_err());
    }
}
