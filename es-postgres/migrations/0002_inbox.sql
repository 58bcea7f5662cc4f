-- The inbox: per consumer and stream, the highest version the consumer
-- applied of events that come from outside the store's own log (a Kafka
-- topic, say). A redelivery at or below it is recognised and dropped. Like
-- 0001, this runs with `search_path` set to the store's schema.
CREATE TABLE inbox (
    consumer        text NOT NULL,
    stream_id       text NOT NULL,
    version         bigint NOT NULL,
    PRIMARY KEY (consumer, stream_id)
);
