//! The CNI environment: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_ARGS`, checked before anything else happens.

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// The verb the runtime asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(text: &str) -> Option<Command> {
        Some(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// Verbs that act on one container's attachment.
    fn needs_container(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }

    /// DEL works without a namespace (it may be gone already).
    fn needs_netns(self) -> bool {
        matches!(self, Command::Add | Command::Check)
    }
}

/// A malformed or missing variable (CNI code 4).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("required env variables [{0}] missing")]
    Missing(String),
    #[error("unknown CNI_COMMAND: {0}")]
    UnknownCommand(String),
    #[error("invalid characters in containerID {0:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$")]
    ContainerId(String),
    #[error("containerID is {0} bytes long: at most 255 fit in the file name of its saved config")]
    ContainerIdTooLong(usize),
    #[error("invalid interface name {name:?}: {why}")]
    IfName { name: String, why: &'static str },
    #[error("invalid CNI_ARGS {0:?}: expected KEY=VALUE pairs separated by ';'")]
    ArgsSyntax(String),
    #[error("unknown CNI_ARGS key {0:?} (set IgnoreUnknown=1 to ignore it)")]
    ArgsUnknown(String),
    #[error("invalid CNI_ARGS IP {0:?}: not an IPv4 address")]
    ArgsIp(String),
}

/// The saved config is a file named by the container ID (`NAME_MAX`).
const MAX_CONTAINER_ID: usize = 255;

/// Everything the environment says about one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    /// `None` when unset (allowed for DEL).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// A specific address asked for through `CNI_ARGS` `IP=`.
    pub requested_ip: Option<Ipv4Addr>,
}

impl CniEnv {
    /// Reads the variables through `get` (so tests need no process env).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv, EnvError> {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        let command_text = var("CNI_COMMAND").ok_or(EnvError::Missing("CNI_COMMAND".into()))?;
        let command = Command::parse(&command_text)
            .ok_or_else(|| EnvError::UnknownCommand(command_text.clone()))?;
        let container_id = var("CNI_CONTAINERID").unwrap_or_default();
        let ifname = var("CNI_IFNAME").unwrap_or_default();
        let netns = var("CNI_NETNS").map(PathBuf::from);
        check_required(command, &container_id, &ifname, netns.is_some())?;
        if command.needs_container() {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
        }
        // DEL of such an ID still runs: it has nothing on disk by that
        // name to find, but releases what the IPAM store holds for it.
        if command != Command::Del && container_id.len() > MAX_CONTAINER_ID {
            return Err(EnvError::ContainerIdTooLong(container_id.len()));
        }
        let requested_ip = parse_args(&var("CNI_ARGS").unwrap_or_default())?;
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            requested_ip,
        })
    }
}

fn check_required(cmd: Command, id: &str, ifname: &str, has_netns: bool) -> Result<(), EnvError> {
    let mut missing = Vec::new();
    if cmd.needs_container() && id.is_empty() {
        missing.push("CNI_CONTAINERID");
    }
    if cmd.needs_netns() && !has_netns {
        missing.push("CNI_NETNS");
    }
    if cmd.needs_container() && ifname.is_empty() {
        missing.push("CNI_IFNAME");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(EnvError::Missing(missing.join(",")))
    }
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`: the ID names files on disk, so nothing
/// that could climb out of a directory gets through.
pub fn validate_container_id(id: &str) -> Result<(), EnvError> {
    if node_state::reclaim::is_valid_container_id(id) {
        Ok(())
    } else {
        Err(EnvError::ContainerId(id.to_string()))
    }
}

/// Linux interface name rules: 1..=15 bytes, not `.`/`..`, no `/`, `:` or
/// whitespace.
pub fn validate_ifname(name: &str) -> Result<(), EnvError> {
    let why = if name.is_empty() {
        "empty"
    } else if name.len() > 15 {
        "longer than 15 bytes"
    } else if name == "." || name == ".." {
        "must not be . or .."
    } else if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
        "must not contain '/', ':' or whitespace"
    } else {
        return Ok(());
    };
    Err(EnvError::IfName {
        name: name.to_string(),
        why,
    })
}

/// Parses `K=V;K=V`. Keys this plugin knows: `IP` (a requested address,
/// as host-local honours it) and `IgnoreUnknown`; others are an error
/// unless `IgnoreUnknown` is true, which is what kubelet always sends.
fn parse_args(args: &str) -> Result<Option<Ipv4Addr>, EnvError> {
    let mut pairs = Vec::new();
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| EnvError::ArgsSyntax(args.to_string()))?;
        pairs.push((key, value));
    }
    let ignore_unknown = pairs
        .iter()
        .any(|(k, v)| *k == "IgnoreUnknown" && matches!(*v, "1" | "true" | "True"));
    let mut ip = None;
    for (key, value) in pairs {
        match key {
            "IP" => ip = Some(value.parse().map_err(|_| EnvError::ArgsIp(value.into()))?),
            "IgnoreUnknown" => {}
            _ if ignore_unknown => {}
            _ => return Err(EnvError::ArgsUnknown(key.to_string())),
        }
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, EnvError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| map.get(k).cloned())
    }

    const ADD: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc-1.x_y"),
        ("CNI_NETNS", "/run/netns/p"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn kubelet_env_parses() {
        let mut vars = ADD.to_vec();
        vars.push((
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
        ));
        let e = env(&vars).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id, "abc-1.x_y");
        assert_eq!(e.netns, Some(PathBuf::from("/run/netns/p")));
        assert_eq!(e.requested_ip, None);
    }

    #[test]
    fn missing_variables_are_named() {
        let err = env(&[("CNI_COMMAND", "ADD")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing"
        );
        let del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert_eq!(del.unwrap().netns, None);
        assert!(env(&[("CNI_COMMAND", "STATUS")]).is_ok());
        assert!(matches!(env(&[]), Err(EnvError::Missing(_))));
        assert!(matches!(
            env(&[("CNI_COMMAND", "FOO")]),
            Err(EnvError::UnknownCommand(_))
        ));
    }

    #[test]
    fn bad_container_ids() {
        for id in ["-a", "a b", "a/b", "../x", ".a", "a$"] {
            assert!(validate_container_id(id).is_err(), "{id}");
        }
        validate_container_id("0aZ_.-").unwrap();
    }

    #[test]
    fn bad_interface_names() {
        for name in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "abcdefghijklmnop",
        ] {
            assert!(validate_ifname(name).is_err(), "{name:?}");
        }
        validate_ifname("abcdefghijklmno").unwrap();
        validate_ifname("eth0.1").unwrap();
    }

    #[test]
    fn cni_args() {
        assert_eq!(
            parse_args("IP=10.0.0.5").unwrap(),
            Some([10, 0, 0, 5].into())
        );
        assert_eq!(
            parse_args("FOO=1").unwrap_err(),
            EnvError::ArgsUnknown("FOO".into())
        );
        assert_eq!(parse_args("FOO=1;IgnoreUnknown=true").unwrap(), None);
        assert!(matches!(parse_args("FOO"), Err(EnvError::ArgsSyntax(_))));
        assert!(matches!(parse_args("IP=x"), Err(EnvError::ArgsIp(_))));
    }
}
