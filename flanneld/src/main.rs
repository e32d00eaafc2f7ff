//! `flanneld`: see the library crate for the design.

use std::collections::HashMap;
use std::process::ExitCode;

use flanneld::cli::{self, Command};

fn main() -> ExitCode {
    let env: HashMap<String, String> = std::env::vars().collect();
    let command = match cli::parse(std::env::args().skip(1), &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flanneld: {e}");
            return ExitCode::from(2);
        }
    };
    let rust_log = env.get("RUST_LOG").map(String::as_str);
    let result = match command {
        Command::Help => {
            print!("{}", cli::usage());
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("flanneld {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Run(opts) | Command::Status(opts)
            if init_log(opts.verbosity, rust_log).is_err() =>
        {
            return ExitCode::from(2);
        }
        Command::Run(opts) => flanneld::daemon::run(opts).map(|()| 0),
        Command::Status(opts) => flanneld::status::run(opts),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            flanneld::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_log(verbosity: u32, rust_log: Option<&str>) -> Result<(), ()> {
    flanneld::log::init(verbosity, flanneld::log::LogFormat::Text, rust_log)
        .map_err(|e| eprintln!("flanneld: {e}"))
}
