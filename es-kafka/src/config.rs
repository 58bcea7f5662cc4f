//! Client settings shared by the relay and the consumer.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

/// Where the brokers are, plus any librdkafka property to set.
///
/// ```
/// use es_kafka::KafkaConfig;
///
/// let config = KafkaConfig::new("127.0.0.1:9092").set("client.id", "orders");
/// assert_eq!(config.bootstrap_servers(), "127.0.0.1:9092");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    bootstrap_servers: String,
    properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Brokers as `host:port[,host:port…]`.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            properties: BTreeMap::new(),
        }
    }

    /// Sets a librdkafka property (see its `CONFIGURATION.md`). Properties set
    /// here win over the defaults the relay and the consumer choose, except
    /// the ones their guarantees rest on (idempotence, manual commits).
    #[must_use]
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// The brokers.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// A client configuration: `defaults` first, then the user's properties,
    /// then `fixed`.
    pub(crate) fn client(&self, defaults: &[(&str, &str)], fixed: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        for (key, value) in fixed {
            config.set(*key, *value);
        }
        config
    }
}
