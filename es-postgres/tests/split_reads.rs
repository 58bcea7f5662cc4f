//! Large reads of the whole log are read in two parts at once, the second
//! starting where the log's recent density places the middle of the read.
//! Where the density changes, the estimate misses: by far, when a run of
//! large appends follows a run of one-event appends (a transaction's events
//! lie next to each other, while each new transaction starts 2^20
//! positions on) and the other way round. Every read must still hand over
//! every event once, in order, and be full until the end of the log.

mod common;

use common::counted;

use es_core::{AppendOptions, EventStore, ExpectedVersion, Position, StreamId};
use es_postgres::{PgEventStore, PgStoreOptions};

const LARGE: usize = 2_000;
const PAGE: usize = 16_384;

async fn append(store: &PgEventStore, stream: &str, n: usize) {
    store
        .append(
            &StreamId::new(stream),
            ExpectedVersion::Any,
            counted(n),
            &AppendOptions::default(),
        )
        .await
        .expect("append");
}

/// Dense, sparse, dense, sparse: runs of large appends and of one-event
/// appends, each run about a read and a half long. Answers the positions of
/// the log, in order.
async fn fill(store: &PgEventStore) -> Vec<Position> {
    for run in 0..4 {
        if run % 2 == 0 {
            for a in 0..12 {
                append(store, &format!("large-{run}-{a}"), LARGE).await;
            }
        } else {
            for a in 0..1_200 {
                append(store, &format!("single-{run}-{}", a % 50), 1).await;
            }
        }
    }
    let sql = format!(
        "SELECT position FROM \"{}\".events ORDER BY position",
        store.schema()
    );
    let positions: Vec<i64> = sqlx::query_scalar(&sql)
        .fetch_all(store.pool())
        .await
        .expect("the positions");
    positions
        .into_iter()
        .map(|p| Position(u64::try_from(p).expect("a position")))
        .collect()
}

#[tokio::test]
async fn split_reads_stay_whole_and_complete_where_the_density_changes() {
    common::with_store(PgStoreOptions::new(), 4, |store| async move {
        let log = fill(&store).await;
        assert_eq!(log.len(), 2 * 12 * LARGE + 2 * 1_200);
        for sent_on in [false, true] {
            let mut read_back = Vec::new();
            let mut sizes = Vec::new();
            let mut after = Position::START;
            for _ in 0..log.len() / PAGE + 3 {
                let slice = common::read_log(&store, after, PAGE, sent_on).await;
                if slice.events.is_empty() {
                    break;
                }
                sizes.push(slice.events.len());
                read_back.extend(slice.events.iter().map(|e| e.position));
                after = slice.next;
            }
            assert_eq!(
                read_back, log,
                "every event once, in order (sent on: {sent_on})"
            );
            let (last, whole) = sizes.split_last().expect("reads");
            assert!(
                whole.iter().all(|&size| size == PAGE) && *last <= PAGE,
                "reads are whole until the end of the log: {sizes:?} (sent on: {sent_on})"
            );
        }
    })
    .await;
}
