//! The given/when/then fixture on the account domain, passing and failing.

mod common;

use common::deposited;

use common::{Account, AccountCommand, AccountError, AccountEvent, Opened, Withdrawn};
use es_core::testkit::AggregateTest;

fn opened() -> AccountEvent {
    AccountEvent::Opened(Opened {
        owner: "ada".into(),
    })
}

#[test]
fn then_returns_the_new_state() {
    let state = AggregateTest::<Account>::given([opened(), deposited(50)])
        .when(AccountCommand::Withdraw { amount: 20 })
        .then([AccountEvent::Withdrawn(Withdrawn { amount: 20 })]);
    assert_eq!(state.balance, 30);
    assert_eq!(state.transactions, 3);
}

#[test]
fn then_error_matches_the_refusal() {
    AggregateTest::<Account>::given([opened(), deposited(5)])
        .when(AccountCommand::Withdraw { amount: 6 })
        .then_error(AccountError::InsufficientFunds {
            balance: 5,
            asked: 6,
        });
    let error = AggregateTest::<Account>::given_no_events()
        .when(AccountCommand::Deposit { amount: 1 })
        .then_rejected();
    assert_eq!(error, AccountError::NotOpen);
}

#[test]
fn given_state_is_visible() {
    let test = AggregateTest::<Account>::given([opened(), deposited(7)]);
    assert_eq!(test.state().balance, 7);
}

#[test]
#[should_panic(expected = "-            amount: 21,")]
fn wrong_events_fail_with_a_diff() {
    AggregateTest::<Account>::given([opened(), deposited(50)])
        .when(AccountCommand::Withdraw { amount: 20 })
        .then([AccountEvent::Withdrawn(Withdrawn { amount: 21 })]);
}

#[test]
#[should_panic(expected = "but the command was rejected: NotOpen")]
fn a_refusal_fails_then() {
    AggregateTest::<Account>::given_no_events()
        .when(AccountCommand::Deposit { amount: 1 })
        .then([deposited(1)]);
}

#[test]
#[should_panic(expected = "the command was rejected with another error")]
fn another_error_fails_then_error() {
    AggregateTest::<Account>::given_no_events()
        .when(AccountCommand::Deposit { amount: 1 })
        .then_error(AccountError::ZeroAmount);
}

#[test]
#[should_panic(expected = "but it produced events")]
fn success_fails_then_error() {
    AggregateTest::<Account>::given([opened()])
        .when(AccountCommand::Deposit { amount: 1 })
        .then_error(AccountError::ZeroAmount);
}

#[test]
fn the_account_catalog_is_snapshotted() {
    es_core::assert_catalog!(AccountEvent);
}
