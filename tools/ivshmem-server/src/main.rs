//! `ivshmem-server`: serves one ivshmem-doorbell channel (see the library documentation).

use std::process::ExitCode;

use ivshmem_server::server::Server;
use ivshmem_server::{Config, USAGE};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let cfg = match Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ivshmem-server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut server = match Server::bind(cfg.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ivshmem-server: cannot serve {}: {e}", cfg.socket.display());
            return ExitCode::FAILURE;
        }
    };
    // The readiness line scripts wait for: clients can connect from now on.
    println!(
        "ivshmem-server: listening on {} size={} vectors={} max_peers={}",
        cfg.socket.display(),
        cfg.size,
        cfg.vectors,
        cfg.max_peers
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ivshmem-server: {e}");
            ExitCode::FAILURE
        }
    }
}
