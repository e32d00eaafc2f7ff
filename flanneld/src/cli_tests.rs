use super::*;

fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn run_with(args: &[&str], env: &HashMap<String, String>) -> Options {
    match parse(args.iter().copied(), env) {
        Ok(Command::Run(o)) => o,
        other => panic!("{args:?}: {other:?}"),
    }
}

fn run(args: &[&str]) -> Options {
    run_with(args, &HashMap::new())
}

fn error(args: &[&str], env: &HashMap<String, String>) -> String {
    match parse(args.iter().copied(), env) {
        Err(e) => e.to_string(),
        Ok(c) => panic!("{args:?} parsed: {c:?}"),
    }
}

#[test]
fn defaults_are_flannels() {
    let o = run(&[]);
    assert_eq!(o.etcd_endpoints, vec!["http://127.0.0.1:2379"]);
    assert_eq!(o.etcd_prefix, "/coreos.com/network");
    assert_eq!(o.etcd_cafile, None);
    assert_eq!(o.etcd_username, None);
    assert!(o.iface.is_empty());
    assert_eq!(o.public_ip, None);
    assert_eq!(o.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
    assert_eq!(o.renew_margin, Duration::from_secs(3600));
    assert!(!o.ip_masq && o.iptables_forward_rules && !o.graceful_leave);
    assert_eq!(o.iptables_resync, Duration::from_secs(5));
    assert_eq!(o.resync_interval, Duration::from_secs(15));
    assert_eq!(o.healthz_port, 0);
    assert_eq!(o.healthz_ip.to_string(), "0.0.0.0");
    assert_eq!(o.verbosity, 0);
    assert_eq!(o.log_format, LogFormat::Text);
    assert_eq!(o.ipam_dir, PathBuf::from("/var/lib/cni/networks"));
    assert_eq!(o.ipam_reclaim_grace, Duration::from_secs(60));
    assert_eq!(o.cni_data_dir, PathBuf::from("/var/lib/cni/flannel"));
    assert_eq!(parse(["run"], &HashMap::new()), Ok(Command::Run(o)));
}

#[test]
fn go_style_flags_are_accepted() {
    let o = run(&[
        "-etcd-endpoints=http://a:1,http://b:2",
        "--iface",
        "eth1",
        "--iface=10.0.0.1",
        "-iface",
        "eth2",
        "--ip-masq",
        "-iptables-forward-rules=false",
        "-v=2",
        "--public-ip",
        "192.0.2.1",
        "-etcd-prefix",
        "/x/network/",
        "-graceful-leave=T",
    ]);
    assert_eq!(o.etcd_endpoints, vec!["http://a:1", "http://b:2"]);
    assert_eq!(o.iface, vec!["eth1", "10.0.0.1", "eth2"]);
    assert!(o.ip_masq && !o.iptables_forward_rules && o.graceful_leave);
    assert_eq!(o.verbosity, 2);
    assert_eq!(o.public_ip, Some("192.0.2.1".parse().unwrap()));
    assert_eq!(o.etcd_prefix, "/x/network");
    for v in [&["-v", "3"][..], &["--v", "3"], &["--v=3"], &["-v=3"]] {
        assert_eq!(run(v).verbosity, 3, "{v:?}");
    }
}

#[test]
fn the_last_of_a_repeated_flag_wins_as_in_go() {
    let o = run(&[
        "--healthz-port=1",
        "-healthz-port",
        "2",
        "--ip-masq",
        "--ip-masq=0",
    ]);
    assert_eq!(o.healthz_port, 2);
    assert!(!o.ip_masq);
}

#[test]
fn values_that_look_like_flags_are_left_alone() {
    let o = run(&["--etcd-username", "-v", "--etcd-password", "--", "--v=1"]);
    assert_eq!(o.etcd_username.as_deref(), Some("-v"));
    assert_eq!(o.etcd_password.as_deref(), Some("--"));
    assert_eq!(o.verbosity, 1);
}

#[test]
fn environment_fills_unset_flags_only() {
    let env = env_of(&[
        ("FLANNELD_ETCD_PREFIX", "/x/network"),
        ("FLANNELD_IP_MASQ", "true"),
        ("FLANNELD_HEALTHZ_PORT", "8471"),
        ("FLANNELD_IFACE", "eth0, 10.0.0.2"),
        ("FLANNELD_V", "1"),
        ("FLANNELD_LOG_FORMAT", "json"),
        ("FLANNELD_PUBLIC_IP", ""),
        ("FLANNELD_HELP", "true"),
        ("FLANNELD_ETCD_PASSWORD", " pass word "),
    ]);
    let o = run_with(&["--healthz-port=9000"], &env);
    assert_eq!(o.etcd_prefix, "/x/network");
    assert!(o.ip_masq);
    assert_eq!(o.healthz_port, 9000);
    assert_eq!(o.iface, vec!["eth0", "10.0.0.2"]);
    assert_eq!(o.verbosity, 1);
    assert_eq!(o.log_format, LogFormat::Json);
    assert_eq!(o.public_ip, None);
    assert_eq!(o.etcd_password.as_deref(), Some(" pass word "));
    // A flag on the command line replaces the environment's list.
    let o = run_with(&["-iface=eth9", "-v", "0", "--ip-masq=false"], &env);
    assert_eq!(o.iface, vec!["eth9"]);
    assert_eq!(o.verbosity, 0);
    assert!(!o.ip_masq);
}

#[test]
fn bad_environment_values_name_the_flag() {
    let env = env_of(&[("FLANNELD_IP_MASQ", "yes")]);
    let err = error(&[], &env);
    assert!(err.contains("--ip-masq") && err.contains("yes"), "{err}");
}

#[test]
fn status_help_and_version() {
    let env = HashMap::new();
    assert!(matches!(
        parse(["status", "-v=1"], &env),
        Ok(Command::Status(o)) if o.verbosity == 1
    ));
    assert!(matches!(
        parse(["-v=1", "status"], &env),
        Ok(Command::Status(_))
    ));
    for help in ["--help", "-help", "-h"] {
        assert_eq!(parse([help], &env), Ok(Command::Help), "{help}");
    }
    for version in ["--version", "-version"] {
        assert_eq!(parse([version], &env), Ok(Command::Version), "{version}");
    }
}

#[test]
fn errors_name_the_flag_and_the_value() {
    let env = HashMap::new();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--bogus"], &["--bogus"]),
        (&["-bogus=1"], &["--bogus"]),
        (&["-v2"], &["--v2"]),
        (&["--iface"], &["--iface"]),
        (
            &["--subnet-lease-renew-margin=1440"],
            &["--subnet-lease-renew-margin", "1440", "1439"],
        ),
        (
            &["--subnet-lease-renew-margin=0"],
            &["--subnet-lease-renew-margin", "'0'"],
        ),
        (&["--public-ip=nope"], &["--public-ip", "nope"]),
        (&["--public-ip=fd00::1"], &["--public-ip", "fd00::1"]),
        (&["--healthz-ip=300.1.1.1"], &["--healthz-ip", "300.1.1.1"]),
        (&["--healthz-port=65536"], &["--healthz-port", "65536"]),
        (
            &["--iptables-resync=0"],
            &["--iptables-resync", "at least 1"],
        ),
        (&["--resync-interval=soon"], &["--resync-interval", "soon"]),
        (&["--ip-masq=maybe"], &["--ip-masq", "maybe"]),
        (
            &["--etcd-endpoints=,"],
            &["--etcd-endpoints", "at least one endpoint"],
        ),
        (&["--log-format=xml"], &["--log-format", "xml"]),
        (&["-v=-1"], &["--v", "-1"]),
        (&["status", "extra"], &["extra"]),
        (&["--ip-masq", "false"], &["false"]),
        (
            &["--ipam-reclaim-grace=soon"],
            &["--ipam-reclaim-grace", "\"soon\" is not a duration"],
        ),
        (
            &["--ipam-reclaim-grace=-5s"],
            &["--ipam-reclaim-grace", "-5s"],
        ),
    ];
    for (args, needles) in cases {
        let err = error(args, &env);
        for needle in *needles {
            assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
        }
    }
}

#[test]
fn reclaim_grace_takes_go_durations_or_seconds() {
    let secs = |s: f64| Duration::from_secs_f64(s);
    let cases = [
        ("60s", secs(60.0)),
        ("0", secs(0.0)),
        ("0s", secs(0.0)),
        ("90", secs(90.0)),
        ("5m", secs(300.0)),
        ("1h30m", secs(5400.0)),
        ("1.5s", secs(1.5)),
        ("250ms", secs(0.25)),
        (" 2s ", secs(2.0)),
    ];
    for (text, want) in cases {
        assert_eq!(duration(text), Ok(want), "{text}");
    }
    for bad in [
        "",
        "s",
        "5x",
        "1m5",
        ".s",
        "1..5s",
        "-1s",
        "1e3s",
        "99999999999999999999h",
    ] {
        assert!(duration(bad).is_err(), "{bad:?}");
    }
    let env = env_of(&[("FLANNELD_IPAM_RECLAIM_GRACE", "2s")]);
    assert_eq!(run_with(&[], &env).ipam_reclaim_grace, secs(2.0));
    let o = run(&["-ipam-reclaim-grace", "0", "--cni-data-dir=/x/flannel"]);
    assert_eq!(o.ipam_reclaim_grace, Duration::ZERO);
    assert_eq!(o.cni_data_dir, PathBuf::from("/x/flannel"));
}

/// The settings the shipped systemd unit documents and the DaemonSet sets.
#[test]
fn shipped_configurations_parse() {
    let unit = include_str!("../../conf/flanneld.service");
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .filter_map(|l| l.strip_prefix('#')?.trim().split_once('='))
        .filter(|(k, _)| k.starts_with("FLANNELD_"))
        .collect();
    assert_eq!(settings.len(), 7, "{settings:?}");
    let o = run_with(&[], &env_of(&settings));
    assert_eq!(
        o.etcd_endpoints,
        vec!["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    );
    assert_eq!((o.iface, o.ip_masq), (vec!["eth0".to_owned()], true));
    assert_eq!(
        (o.healthz_ip.to_string(), o.healthz_port),
        ("127.0.0.1".into(), 8285)
    );

    let manifest = include_str!("../../conf/kube-flannel-ds.yaml");
    let mut settings = daemonset_env(manifest);
    assert_eq!(settings.len(), 5, "{settings:?}");
    // From the pod's status.hostIP.
    settings.insert("FLANNELD_PUBLIC_IP".into(), "192.0.2.11".into());
    let o = run_with(&[], &settings);
    assert_eq!(o.etcd_endpoints, vec!["http://etcd.example.internal:2379"]);
    assert!(o.ip_masq);
    assert_eq!(o.healthz_port, 8285);
    assert_eq!(o.public_ip, Some(Ipv4Addr::new(192, 0, 2, 11)));
}

/// `- name: FLANNELD_X` followed by `value: "..."` in a manifest.
fn daemonset_env(manifest: &str) -> HashMap<String, String> {
    let lines: Vec<&str> = manifest.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter_map(|w| {
            let name = w[0].strip_prefix("- name: ")?;
            let value = w[1].strip_prefix("value: ")?;
            Some((name.to_owned(), value.trim_matches('"').to_owned()))
        })
        .filter(|(k, _)| k.starts_with("FLANNELD_"))
        .collect()
}

/// README.md's flag table lists every flag with its variable and default.
#[test]
fn readme_documents_every_flag() {
    let readme = include_str!("../../README.md");
    let cmd = command();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        let row = readme
            .lines()
            .find(|l| first_cell(l).is_some_and(|c| c.contains(&format!("`--{long}`"))))
            .unwrap_or_else(|| panic!("--{long} is not in README.md's flag table"));
        if long != "help" && long != "version" {
            let key = format!("`FLANNELD_{}`", long.to_uppercase().replace('-', "_"));
            assert!(row.contains(&key), "{row}");
        }
        for default in arg.get_default_values() {
            let default = format!("`{}`", default.to_string_lossy());
            assert!(row.contains(&default), "{row} lacks {default}");
        }
    }
    let help = usage();
    for needle in [
        "--etcd-endpoints <URLS>",
        "FLANNELD_ETCD_ENDPOINTS",
        "status",
    ] {
        assert!(help.contains(needle), "{help}");
    }
}

fn first_cell(row: &str) -> Option<&str> {
    row.strip_prefix('|')?.split('|').next()
}
