//! Process managers: a saga's steps run exactly once across crashes between
//! steps, restarts and replays.

mod common;

use common::open;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::{Account, AccountCommand, AccountEvent};
use es_core::{
    BoxError, Envelope, Event, EventStore, Handles, InMemoryStore, Projection, ProjectionRunner,
    Reaction, Repository, ResetProjection, Version,
};

/// On every opened account: a welcome bonus of 100, then a fee of 1 into the
/// bank's own account. The second step fails once when asked to.
#[derive(Projection)]
#[projection(name = "welcome", events(AccountEvent))]
struct Welcome {
    accounts: Repository<Account, InMemoryStore>,
    fail_second_step_once: AtomicBool,
    second_steps_tried: AtomicUsize,
}

#[async_trait::async_trait]
impl Handles<AccountEvent> for Welcome {
    async fn handle_event(
        &self,
        (): &mut (),
        event: Envelope<AccountEvent>,
    ) -> Result<(), BoxError> {
        let AccountEvent::Opened(opened) = &event.event else {
            return Ok(());
        };
        if opened.owner == "bank" {
            return Ok(());
        }
        let reaction = Reaction::new(Self::NAME, &event);
        let customer = event
            .stream_id
            .as_str()
            .trim_start_matches("account-")
            .to_owned();
        reaction
            .execute(
                &self.accounts,
                &customer,
                AccountCommand::Deposit { amount: 100 },
            )
            .await?;
        self.second_steps_tried.fetch_add(1, Ordering::SeqCst);
        if self.fail_second_step_once.swap(false, Ordering::SeqCst) {
            return Err("crashed between the two steps".into());
        }
        reaction
            .execute(
                &self.accounts,
                "bank",
                AccountCommand::Deposit { amount: 1 },
            )
            .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl ResetProjection for Welcome {
    async fn reset_read_model(&self, (): &mut ()) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_crash_between_steps_completes_exactly_once_after_restart() {
    let store = InMemoryStore::new();
    let accounts = Repository::<Account, _>::new(store.clone());
    accounts.execute("bank", open("bank")).await.unwrap();
    accounts.execute("ada", open("ada")).await.unwrap();
    accounts.execute("bo", open("bo")).await.unwrap();

    let saga = Welcome {
        accounts: accounts.clone(),
        fail_second_step_once: AtomicBool::new(true),
        second_steps_tried: AtomicUsize::new(0),
    };
    let runner = ProjectionRunner::new(store.clone(), saga);
    let crashed = runner.catch_up().await.unwrap_err();
    assert!(
        crashed
            .to_string()
            .contains("crashed between the two steps"),
        "{crashed}"
    );
    assert_eq!(
        accounts.load("ada").await.unwrap().state.balance,
        100,
        "step one ran"
    );
    assert_eq!(
        accounts.load("bank").await.unwrap().state.balance,
        0,
        "step two did not"
    );

    // The restart handles the same event again: step one is remembered, step two runs.
    runner.catch_up().await.unwrap();
    assert_eq!(accounts.load("ada").await.unwrap().state.balance, 100);
    assert_eq!(accounts.load("bo").await.unwrap().state.balance, 100);
    assert_eq!(accounts.load("bank").await.unwrap().state.balance, 2);
    assert_eq!(
        runner
            .projection()
            .second_steps_tried
            .load(Ordering::SeqCst),
        3
    );

    // A full replay of the log repeats no effect.
    runner.rebuild().await.unwrap();
    runner.catch_up().await.unwrap();
    assert_eq!(accounts.load("ada").await.unwrap().state.balance, 100);
    assert_eq!(accounts.load("bank").await.unwrap().state.balance, 2);
    let ada = store
        .read_stream(&"account-ada".into(), Version(1), 100)
        .await
        .unwrap();
    assert_eq!(ada.len(), 2, "opened and one bonus, nothing more");
}

#[tokio::test]
async fn saga_commands_carry_causation_and_correlation() {
    let store = InMemoryStore::new();
    let accounts = Repository::<Account, _>::new(store.clone());
    accounts.execute("bank", open("bank")).await.unwrap();
    accounts
        .execute_with("cy", open("cy"), es_core::Metadata::correlated("req-7"))
        .await
        .unwrap();
    let saga = Welcome {
        accounts: accounts.clone(),
        fail_second_step_once: AtomicBool::new(false),
        second_steps_tried: AtomicUsize::new(0),
    };
    ProjectionRunner::new(store.clone(), saga)
        .catch_up()
        .await
        .unwrap();
    let cy = store
        .read_stream(&"account-cy".into(), Version(1), 10)
        .await
        .unwrap();
    let opened_id = cy[0].event_id.to_string();
    let bonus = &cy[1];
    assert_eq!(
        bonus.metadata.causation_id.as_deref(),
        Some(opened_id.as_str())
    );
    assert_eq!(bonus.metadata.correlation_id.as_deref(), Some("req-7"));
    let key = format!("welcome/{opened_id}/0");
    let first = store
        .find_idempotency_key(&key)
        .await
        .unwrap()
        .expect("step 0 key");
    assert_eq!(first.first_version, Version(2));
    assert_eq!(AccountEvent::decode(bonus).unwrap().event_type, "Deposited");
}
