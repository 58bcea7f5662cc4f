//! Configuration: command-line flags, each with an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Where events and read models are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// A SQLite file (`--database-url`): durable, nothing to install.
    Sqlite,
    /// Memory: everything is lost when the process exits.
    Memory,
    /// PostgreSQL (`--database-url postgres://…`, tables in `--database-schema`).
    Postgres,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable text, for a terminal.
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

/// The order service's settings.
#[derive(Clone, Debug, PartialEq, Eq, Parser)]
#[command(
    name = "order-service",
    version,
    about = "An event-sourced order service: HTTP API, read models and a checkout saga",
    long_about = "An event-sourced order service on the es framework: an HTTP API over orders \
                  and stock, read models kept by projections, and a checkout saga that reserves \
                  stock for placed orders. Every flag has an environment variable as fallback."
)]
pub struct Config {
    /// The address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,

    /// Where events and read models are kept: `sqlite` (the file in
    /// --database-url), `memory` (lost on exit) or `postgres` (the server in
    /// --database-url).
    #[arg(long, env = "ORDER_STORE", value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,

    /// The SQLite database file (a path, `sqlite://path` or `:memory:`),
    /// created if missing; or, with `--store postgres`, the PostgreSQL URL
    /// (`postgres://user@host:5432/database`).
    #[arg(long, env = "DATABASE_URL", default_value = "./order-service.db")]
    pub database_url: String,

    /// With `--store postgres`: the schema that holds the events and the
    /// read models (created if missing; lower-case letters, digits and `_`).
    #[arg(long, env = "DATABASE_SCHEMA", default_value = "order_service")]
    pub database_schema: String,

    /// The largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "BODY_LIMIT_BYTES", default_value_t = 64 * 1024)]
    pub body_limit: usize,

    /// How long shutdown waits for requests in flight, in seconds, before it
    /// closes their connections.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Which log lines to write, as a tracing filter such as `info` or
    /// `info,order_service=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,

    /// How log lines are written.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// The Kafka brokers (`host:port[,host:port…]`) to publish every event
    /// to, one topic per aggregate; without it nothing is published.
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: Option<String>,

    /// With --kafka-bootstrap: the prefix of the topic names, which are
    /// `{prefix}order` and `{prefix}inventory`.
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "order-service.")]
    pub kafka_topic_prefix: String,
}

impl Config {
    /// The SQLite file of `--database-url`, without a `sqlite:` scheme.
    pub fn sqlite_path(&self) -> PathBuf {
        let url = self.database_url.as_str();
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        PathBuf::from(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sqlite_on_port_3000() {
        use clap::CommandFactory;
        // Read the declared defaults: the environment may override parsed values.
        let command = Config::command();
        let default = |id: &str| {
            let arg = command.get_arguments().find(|a| a.get_id() == id).unwrap();
            arg.get_default_values()[0].to_string_lossy().into_owned()
        };
        assert_eq!(default("store"), "sqlite");
        assert_eq!(default("listen"), "127.0.0.1:3000");
        assert_eq!(default("database_url"), "./order-service.db");
        assert_eq!(default("kafka_topic_prefix"), "order-service.");
        let kafka = command
            .get_arguments()
            .find(|a| a.get_id() == "kafka_bootstrap")
            .unwrap();
        assert!(kafka.get_default_values().is_empty(), "Kafka is opt-in");
    }

    #[test]
    fn flags_are_parsed() {
        let config = Config::try_parse_from([
            "order-service",
            "--store",
            "memory",
            "--database-url",
            "sqlite://data/x.db",
            "--body-limit",
            "100",
        ])
        .unwrap();
        assert_eq!(config.store, StoreKind::Memory);
        assert_eq!(config.sqlite_path(), PathBuf::from("data/x.db"));
        assert_eq!(config.body_limit, 100);
        assert!(Config::try_parse_from(["order-service", "--store", "mongo"]).is_err());
    }

    #[test]
    fn kafka_flags_are_parsed() {
        let config = Config::try_parse_from([
            "order-service",
            "--kafka-bootstrap",
            "10.0.0.7:9092,10.0.0.8:9092",
            "--kafka-topic-prefix",
            "shop.",
        ])
        .unwrap();
        assert_eq!(
            config.kafka_bootstrap.as_deref(),
            Some("10.0.0.7:9092,10.0.0.8:9092")
        );
        assert_eq!(config.kafka_topic_prefix, "shop.");
    }

    #[test]
    fn every_flag_has_help() {
        use clap::CommandFactory;
        let command = Config::command();
        for arg in command.get_arguments() {
            if arg.get_id() == "help" || arg.get_id() == "version" {
                continue;
            }
            assert!(arg.get_help().is_some(), "--{} has no help", arg.get_id());
            assert!(
                arg.get_env().is_some(),
                "--{} has no env fallback",
                arg.get_id()
            );
        }
    }
}
