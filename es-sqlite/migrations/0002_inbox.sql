-- The inbox: per consumer and stream, the highest version the consumer
-- applied of events that come from outside the store's own log (a Kafka
-- topic, say). A redelivery at or below it is recognised and dropped.
CREATE TABLE es_inbox (
    consumer  TEXT    NOT NULL,
    stream_id TEXT    NOT NULL,
    version   INTEGER NOT NULL,
    PRIMARY KEY (consumer, stream_id)
);
