//! The `stonescriptdb-gateway` binary: read configuration, run the server, map failures to exit codes;
//! `setup-db` prepares PostgreSQL for it instead (see [`setup_db`]); `adopt` and `release` take over the
//! databases of stonescriptdb-gateway 1.x and give them back (see [`adopt`]); `deploy` and `migrate` upload a
//! schema folder to a running gateway (see [`stonescriptdb_gateway::cli`]).

mod adopt;
mod setup_db;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use stonescriptdb_gateway::config::{self, Command, Config};
use stonescriptdb_gateway::server::Server;
use stonescriptdb_gateway::{VERSION, log};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("setup-db") => return ExitCode::from(setup_db::main(&args[1..])),
        Some("adopt") => return ExitCode::from(adopt::adopt_main(&args[1..])),
        Some("release") => return ExitCode::from(adopt::release_main(&args[1..])),
        Some("deploy") => return ExitCode::from(stonescriptdb_gateway::cli::main(false, &args[1..])),
        Some("migrate") => return ExitCode::from(stonescriptdb_gateway::cli::main(true, &args[1..])),
        _ => {}
    }
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
        eprintln!("stonescriptdb-gateway: cannot open the log file {e}");
        return ExitCode::from(2);
    }
    // A setting that does nothing is said at start (1.x's DATA_DIR among them).
    let dotenv = std::fs::read_to_string(cwd.join(".env")).ok();
    for u in config::unknown::unknown_keys(dotenv.as_deref(), &env) {
        log::warn("a setting the gateway does not read", &[("key", &u.key), ("in", &u.source), ("note", &u.note)]);
    }
    let mut cfg = cfg;
    check_open_files(&mut cfg);
    let (mut server, _handle) = match Server::bind(*cfg) {
        Ok(s) => s,
        Err(e) => {
            log::error("startup failed", &[("error", &e)]);
            log::flush(Duration::from_secs(2));
            return ExitCode::from(1);
        }
    };
    if let Err(e) = server.watch_signals().and_then(|()| log::reopen_on_signals()) {
        log::error("cannot install signal handlers", &[("error", &e)]);
        log::flush(Duration::from_secs(2));
        return ExitCode::from(1);
    }
    let code = match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error("event loop failed", &[("error", &e)]);
            ExitCode::from(1)
        }
    };
    // Lines still queued for the writer thread go out before the process ends.
    log::flush(Duration::from_secs(2));
    code
}

/// Descriptors besides client and backend connections: listener, poll, waker, log file, deploy and
/// catalog sessions, lookups.
const FD_HEADROOM: usize = 64;

/// Each client connection and each backend connection is an open file; a process limit below their sum
/// (the default soft limit is 1024) makes accepts fail under load long before `MAX_CLIENT_CONNECTIONS`.
/// Said at start, so it is found before the load arrives.
fn check_open_files(cfg: &mut Config) {
    let others = cfg.pool.max_total + cfg.deploy.workers + cfg.deploy.parallelism + FD_HEADROOM;
    let need = cfg.limits.max_client_connections + others;
    if let Some(limit) = open_files_limit().filter(|&l| l < need) {
        // Client connections are capped below the limit, with room kept for PostgreSQL connections:
        // too many clients then get a refused connect, never a gateway that cannot open files.
        let cap = limit.saturating_sub(others).max(1);
        log::warn(
            "the open-files limit is below what the connection limits need; client connections are capped to fit",
            &[
                ("limit", &limit),
                ("needed", &need),
                ("max_client_connections", &cap),
                ("hint", &"raise LimitNOFILE (systemd unit) or ulimit -n, or lower MAX_CLIENT_CONNECTIONS"),
            ],
        );
        cfg.limits.max_client_connections = cfg.limits.max_client_connections.min(cap);
    }
}

/// The soft `RLIMIT_NOFILE` from `/proc/self/limits`; `None` when unlimited or unknown.
fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
