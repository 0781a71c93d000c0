//! Aggregates through a Repository: commands, conflicts retried, snapshots every N events, and
//! upcasting of events stored before their new version existed.

mod common;

use std::sync::Arc;

use common::*;
use herald::Event;
use herald_es::{
    event_set, Aggregate, CommandError, Database, EventStore, Metadata, Repository, Upcasters,
};
use serde::{Deserialize, Serialize};

/// Version 1 of the contract: what the first release of the service stored.
mod v1 {
    use super::*;

    #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    #[event(name = "account.deposited", version = 1)]
    pub struct Deposited {
        pub amount: u64,
    }

    event_set! {
        #[derive(Debug, Clone)]
        pub enum AccountEvent { Deposited(Deposited) }
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    pub struct Account {
        pub balance: u64,
    }

    impl Aggregate for Account {
        const KIND: &'static str = "account";
        type Event = AccountEvent;
        type Command = u64;
        type Error = std::convert::Infallible;
        fn apply(&mut self, e: &AccountEvent) {
            let AccountEvent::Deposited(d) = e;
            self.balance += d.amount;
        }
        fn handle(&self, amount: &u64) -> Result<Vec<AccountEvent>, Self::Error> {
            Ok(vec![Deposited { amount: *amount }.into()])
        }
    }
}

/// Version 2: amounts in cents with a currency; a withdrawal that may be refused.
mod v2 {
    use super::*;

    #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    #[event(name = "account.deposited", version = 2)]
    pub struct Deposited {
        pub cents: u64,
        pub currency: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    #[event(name = "account.withdrawn")]
    pub struct Withdrawn {
        pub cents: u64,
    }

    event_set! {
        #[derive(Debug, Clone)]
        pub enum AccountEvent { Deposited(Deposited), Withdrawn(Withdrawn) }
    }

    #[derive(Debug, Clone)]
    pub enum Command {
        Deposit(u64),
        Withdraw(u64),
    }

    #[derive(Debug, thiserror::Error, PartialEq)]
    #[error("insufficient funds: {balance} cents, {wanted} wanted")]
    pub struct InsufficientFunds {
        pub balance: u64,
        pub wanted: u64,
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    pub struct Account {
        pub cents: u64,
        pub applied: u64,
    }

    impl Aggregate for Account {
        const KIND: &'static str = "account";
        type Event = AccountEvent;
        type Command = Command;
        type Error = InsufficientFunds;
        fn apply(&mut self, e: &AccountEvent) {
            self.applied += 1;
            match e {
                AccountEvent::Deposited(d) => self.cents += d.cents,
                AccountEvent::Withdrawn(w) => self.cents -= w.cents,
            }
        }
        fn handle(&self, c: &Command) -> Result<Vec<AccountEvent>, InsufficientFunds> {
            Ok(match c {
                Command::Deposit(cents) => vec![Deposited {
                    cents: *cents,
                    currency: "EUR".into(),
                }
                .into()],
                Command::Withdraw(cents) if *cents > self.cents => {
                    return Err(InsufficientFunds {
                        balance: self.cents,
                        wanted: *cents,
                    })
                }
                Command::Withdraw(cents) => vec![Withdrawn { cents: *cents }.into()],
            })
        }
    }

    /// What the v2 release registers to read what v1 stored.
    pub fn upcasters() -> Upcasters {
        Upcasters::new().step(|old: v1::Deposited| Deposited {
            cents: old.amount * 100,
            currency: "EUR".into(),
        })
    }
}

async fn stores(prefix: &str, dir: &tempfile::TempDir, up: Upcasters) -> (Vec<Database>, PgSchema) {
    let (pg, guard) = pg_store(prefix, up.clone()).await;
    (
        vec![
            Database::Postgres(pg),
            Database::Sqlite(sqlite_store(dir, up)),
        ],
        guard,
    )
}

#[tokio::test]
async fn commands_append_events_and_domain_errors_append_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (dbs, _g) = stores("es_cmd", &dir, Upcasters::new()).await;
    for db in dbs {
        let accounts = Repository::<v2::Account>::new(db.events());
        let meta = Metadata::new().correlation_id("flow-1");
        let done = accounts
            .handle("a1", &v2::Command::Deposit(500), &meta)
            .await
            .unwrap();
        assert_eq!((done.state.cents, done.version), (500, 1));
        let refused = accounts
            .handle("a1", &v2::Command::Withdraw(900), &meta)
            .await
            .unwrap_err();
        assert_eq!(
            refused.domain(),
            Some(&v2::InsufficientFunds {
                balance: 500,
                wanted: 900
            })
        );
        assert!(matches!(refused, CommandError::Domain(_)));
        assert_eq!(db.events().stream_version("account-a1").await.unwrap(), 1);
        let events = db.events().read_stream("account-a1", 0).await.unwrap();
        assert_eq!(events[0].envelope.correlation_id.as_deref(), Some("flow-1"));
    }
}

/// Two processes' worth of concurrent commands on one account: each command loads, decides and
/// appends; the losers of a race load again and decide again. None is lost, none applied twice.
#[tokio::test]
async fn concurrent_commands_on_one_aggregate_are_retried_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let (dbs, _g) = stores("es_race", &dir, Upcasters::new()).await;
    for db in dbs {
        let accounts = Repository::<v2::Account>::new(db.events()).attempts(200);
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let accounts = accounts.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    accounts
                        .handle("shared", &v2::Command::Deposit(1), &Metadata::new())
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let loaded = accounts.load("shared").await.unwrap();
        assert_eq!(
            (loaded.state.cents, loaded.version),
            (80, 80),
            "{}",
            db.kind()
        );
    }
}

#[tokio::test]
async fn snapshots_are_taken_every_n_events_and_loading_starts_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let (dbs, _g) = stores("es_snap", &dir, Upcasters::new()).await;
    for db in dbs {
        let store = db.events();
        let accounts = Repository::<v2::Account>::new(store.clone()).snapshot_every(5);
        for _ in 0..12 {
            accounts
                .handle("s1", &v2::Command::Deposit(10), &Metadata::new())
                .await
                .unwrap();
        }
        let snapshot = store.load_snapshot("account-s1").await.unwrap().unwrap();
        assert_eq!(snapshot.version, 10, "{}", db.kind());
        assert_eq!(snapshot.state["cents"], 100);
        // The loaded state is the snapshot plus the two events after it: the aggregate's
        // `applied` counter (serialized in the snapshot as 10) shows both paths were used.
        let loaded = accounts.load("s1").await.unwrap();
        assert_eq!((loaded.state.cents, loaded.version), (120, 12));
        assert_eq!(loaded.state.applied, 12);
        // A snapshot of another schema version is ignored: the events alone give the same.
        store
            .save_snapshot(&herald_es::Snapshot {
                schema_version: 99,
                state: serde_json::json!({"garbage": true}),
                ..snapshot
            })
            .await
            .unwrap();
        let loaded = accounts.load("s1").await.unwrap();
        assert_eq!((loaded.state.cents, loaded.version), (120, 12));
    }
}

/// v1 of the service stores deposits in whole euros; v2 (which does not know v1's type) reads
/// them as cents through an upcaster, in aggregates and in the global order alike.
#[tokio::test]
async fn events_stored_by_v1_are_read_as_v2_through_upcasters() {
    let dir = tempfile::tempdir().unwrap();
    let (old, guard) = pg_store("es_upcast", Upcasters::new()).await;
    let old_sqlite = sqlite_store(&dir, Upcasters::new());
    for store in [
        old.clone() as Arc<dyn EventStore>,
        old_sqlite as Arc<dyn EventStore>,
    ] {
        let accounts = Repository::<v1::Account>::new(store);
        accounts.handle("u1", &3, &Metadata::new()).await.unwrap();
        accounts.handle("u1", &4, &Metadata::new()).await.unwrap();
    }
    // The v2 release opens the same stores with its upcasters.
    let new_pg = herald_es::postgres::PgEventStore::builder(PG)
        .schema(&guard.0)
        .service("test-service")
        .upcasters(v2::upcasters())
        .connect()
        .await
        .unwrap();
    let new_sqlite =
        herald_es::sqlite::SqliteEventStore::open(dir.path().join("es.db"), "test-service")
            .unwrap()
            .with_upcasters(v2::upcasters());
    for store in [
        Arc::new(new_pg) as Arc<dyn EventStore>,
        Arc::new(new_sqlite) as Arc<dyn EventStore>,
    ] {
        let accounts = Repository::<v2::Account>::new(store.clone());
        let loaded = accounts.load("u1").await.unwrap();
        assert_eq!((loaded.state.cents, loaded.version), (700, 2));
        let done = accounts
            .handle("u1", &v2::Command::Withdraw(650), &Metadata::new())
            .await
            .unwrap();
        assert_eq!(done.state.cents, 50);
        let all = read_all_eventually(&*store, 3).await;
        assert_eq!(all[0].envelope.event_version, 2);
        assert_eq!(all[0].envelope.routing_key, "account.deposited.v2");
        assert_eq!(
            all[0].decode_as::<v2::Deposited>().unwrap().unwrap().cents,
            300
        );
    }
    // Without the upcaster the v2 code refuses the v1 event, saying what to do.
    let bare = Repository::<v2::Account>::new(old);
    let err = bare.load("u1").await.unwrap_err().to_string();
    assert!(err.contains("register an upcaster"), "{err}");
}
