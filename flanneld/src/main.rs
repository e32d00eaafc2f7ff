//! `flanneld`: see the library crate for the design.

use std::collections::HashMap;
use std::process::ExitCode;

use flanneld::cli::{self, Command, Options};

fn main() -> ExitCode {
    // Variables that are not UTF-8 cannot be flannel settings: skip them.
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let args: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect();
    let command = match args.map(|args| cli::parse(args, &env)) {
        Ok(Ok(c)) => c,
        Err(arg) => {
            eprintln!("flanneld: argument {arg:?} is not valid UTF-8");
            return ExitCode::from(2);
        }
        Ok(Err(e)) => {
            eprintln!("flanneld: {e}");
            return ExitCode::from(2);
        }
    };
    let (opts, run): (Options, fn(Options) -> anyhow::Result<u8>) = match command {
        Command::Help => {
            print!("{}", cli::usage());
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("flanneld {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Run(opts) => (opts, |o| flanneld::daemon::run(o).map(|()| 0)),
        Command::Status(opts) => (opts, flanneld::status::run),
    };
    let rust_log = env.get("RUST_LOG").map(String::as_str);
    if let Err(e) = flanneld::log::init(opts.verbosity, opts.log_format, rust_log) {
        eprintln!("flanneld: {e}");
        return ExitCode::from(2);
    }
    match run(opts) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            flanneld::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
