//! The reference system's event catalog: its four contracts, realistic examples, and the
//! consumers its topology implies. `herald docs` renders it; the dashboard serves its JSON.

use chrono::{DateTime, TimeZone, Utc};
use herald::catalog::Catalog;
use herald::Config;

use super::events::{CourseCreated, CourseEnrolled, ReviewCreated, UserRegistered};
use crate::CliResult;

/// The catalog of the demo system on `config`'s exchange and broker, computed without touching
/// the broker.
pub async fn catalog(config: &Config) -> CliResult<Catalog> {
    let topology = super::topology(config).await?;
    let at = example_time();
    Ok(Catalog::new(&config.exchange)
        .example(&UserRegistered {
            user_id: 123,
            email: "ada@example.com".into(),
            name: "Ada Lovelace".into(),
            registered_at: at,
        })
        .example(&CourseCreated {
            course_id: 789,
            title: "Python Fundamentals".into(),
            instructor_id: 7,
            created_at: at,
        })
        .example(&CourseEnrolled {
            enrollment_id: 456,
            user_id: 123,
            course_id: 789,
            course_title: "Python Fundamentals".into(),
            enrolled_at: at,
        })
        .example(&ReviewCreated {
            review_id: 42,
            user_id: 123,
            course_id: 789,
            rating: 5,
            has_comment: true,
            created_at: at,
        })
        .with_topology(&topology)
        .broker(&config.broker)?)
}

/// A fixed time, so generated docs do not change on every run.
fn example_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 15, 10, 35, 0)
        .single()
        .unwrap_or_default()
}
