//! Runs the order service: `cargo run -p order-service` serves the HTTP API
//! on 127.0.0.1:3000 with the SQLite store in `./order-service.db`; add
//! `-- --store memory` for a store in memory, or `-- --help` for every flag.
//! Stop it with ctrl-c or SIGTERM: requests in flight finish, projections
//! stop after their batch.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = order_service::Config::parse();
    if let Err(error) = order_service::init_tracing(&config) {
        eprintln!("order-service: cannot set up logging: {error}");
        return ExitCode::FAILURE;
    }
    match order_service::run(config, order_service::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "order-service failed");
            eprintln!("order-service: {error}");
            ExitCode::FAILURE
        }
    }
}
