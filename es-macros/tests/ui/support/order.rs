// The order domain the aggregate UI cases share: an event family, a command
// and an error, all valid.

#[derive(es_core::Event, serde::Serialize, serde::Deserialize, Debug, Clone)]
enum OrderEvent {
    Placed { customer: String },
}

#[derive(Debug, Clone)]
enum OrderCommand {
    Place { customer: String },
}

#[derive(Debug, thiserror::Error)]
#[error("order error")]
struct OrderError;
