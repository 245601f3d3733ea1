//! The `stonescriptdb-gateway` binary: read configuration, run the server, map failures to exit codes.

use std::collections::HashMap;
use std::process::ExitCode;

use stonescriptdb_gateway::config::{self, Command};
use stonescriptdb_gateway::server::Server;
use stonescriptdb_gateway::{VERSION, log};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env: HashMap<String, String> = std::env::vars().collect();
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let cfg = match config::load(&cwd, &env, &args) {
        Ok(Command::Help) => {
            print!("{}", config::keys::help_text());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("stonescriptdb-gateway {VERSION}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(cfg)) => cfg,
        Err(e) => {
            eprintln!("stonescriptdb-gateway: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = log::init(&cfg.log) {
        eprintln!("stonescriptdb-gateway: cannot open log file: {e}");
        return ExitCode::from(2);
    }
    let (mut server, _handle) = match Server::bind(*cfg) {
        Ok(s) => s,
        Err(e) => {
            log::error("startup failed", &[("error", &e)]);
            return ExitCode::from(1);
        }
    };
    if let Err(e) = server.watch_signals() {
        log::error("cannot install signal handlers", &[("error", &e)]);
        return ExitCode::from(1);
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error("event loop failed", &[("error", &e)]);
            ExitCode::from(1)
        }
    }
}
