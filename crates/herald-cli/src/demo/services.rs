//! The KnowledgeNest services: three publishers and two consumers, each its own bus (as each
//! would be its own process in production).

use std::time::Duration;

use chrono::Utc;
use herald::middleware::RetryPolicy;
use herald::{Bus, Config, Context, Event, HandlerError, SubscribeOptions};
use herald_check::History;

use super::events::{CourseCreated, CourseEnrolled, ReviewCreated, UserRegistered};
use super::DemoOptions;
use crate::CliResult;

pub const CONSUMERS: [&str; 2] = ["notification-service", "analytics-service"];

/// The retry policy the demo's consumers use: quick, so retries show within seconds.
pub fn demo_retry() -> RetryPolicy {
    RetryPolicy {
        immediate: 0,
        ..RetryPolicy::exponential(3, Duration::from_millis(200))
    }
}

async fn bus(config: &Config, service: &str) -> CliResult<Bus> {
    Ok(Bus::builder()
        .config(config.clone())
        .service(service)
        .build()
        .await?)
}

/// A stable number in [0, 1) from an id, so a given event fails the same way on every attempt.
fn unit_hash(id: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn notification<E: Event>() -> impl Fn(E, Context) -> std::future::Ready<()> + Send + Sync + 'static
{
    move |_event: E, ctx: Context| {
        tracing::debug!(event = E::NAME, id = ctx.id(), "notification sent");
        std::future::ready(())
    }
}

fn analytics<E: Event>(
    fail_rate: f64,
    poison_rate: f64,
) -> impl Fn(E, Context) -> std::future::Ready<Result<(), HandlerError>> + Send + Sync + 'static {
    move |_event: E, ctx: Context| {
        let roll = unit_hash(ctx.id());
        let result = if roll < poison_rate {
            Err(HandlerError::transient(
                "analytics store rejected the record: schema drift",
            ))
        } else if roll < poison_rate + fail_rate && ctx.attempt() == 1 {
            Err(HandlerError::transient("analytics store timed out"))
        } else {
            Ok(())
        };
        std::future::ready(result)
    }
}

/// Start notification-service and analytics-service; every handling that succeeds is recorded
/// in `history`.
pub async fn start_consumers(
    config: &Config,
    history: &History,
    options: &DemoOptions,
) -> CliResult<Vec<Bus>> {
    let opts = |service: &str| {
        SubscribeOptions::new()
            .retry(demo_retry())
            .layer(history.recorder(service))
    };
    let n = || opts(CONSUMERS[0]);
    let notify = bus(config, CONSUMERS[0]).await?;
    notify.subscribe_with(notification::<UserRegistered>(), n())?;
    notify.subscribe_with(notification::<CourseCreated>(), n())?;
    notify.subscribe_with(notification::<CourseEnrolled>(), n())?;
    notify.subscribe_with(notification::<ReviewCreated>(), n())?;
    let (f, p) = (options.fail_rate, options.poison_rate);
    let a = || opts(CONSUMERS[1]);
    let stats = bus(config, CONSUMERS[1]).await?;
    stats.subscribe_with(analytics::<UserRegistered>(f, p), a())?;
    stats.subscribe_with(analytics::<CourseCreated>(f, p), a())?;
    stats.subscribe_with(analytics::<CourseEnrolled>(f, p), a())?;
    stats.subscribe_with(analytics::<ReviewCreated>(f, p), a())?;
    notify.start().await?;
    stats.start().await?;
    Ok(vec![notify, stats])
}

/// The three publishing services.
pub struct Publishers {
    auth: Bus,
    course: Bus,
    review: Bus,
}

impl Publishers {
    pub async fn connect(config: &Config) -> CliResult<Self> {
        Ok(Publishers {
            auth: bus(config, "auth-service").await?,
            course: bus(config, "course-service").await?,
            review: bus(config, "review-service").await?,
        })
    }

    /// Publish the `i`-th event of the scenario: a user registers, a course appears, the user
    /// enrolls, the user reviews it; repeat. Returns its id and routing key once confirmed.
    pub async fn publish_next(&self, i: u64) -> CliResult<(String, &'static str)> {
        let now = Utc::now();
        let user_id = 1000 + i / 4;
        let course_id = 500 + (i / 4) % 37;
        let published = match i % 4 {
            0 => self
                .auth
                .publish(&UserRegistered {
                    user_id,
                    email: format!("learner{user_id}@example.com"),
                    name: format!("Learner {user_id}"),
                    registered_at: now,
                })
                .await
                .map(|id| (id, UserRegistered::ROUTING_KEY)),
            1 => self
                .course
                .publish(&CourseCreated {
                    course_id,
                    title: format!("Rust in Practice, part {course_id}"),
                    instructor_id: 7,
                    created_at: now,
                })
                .await
                .map(|id| (id, CourseCreated::ROUTING_KEY)),
            2 => self
                .course
                .publish(&CourseEnrolled {
                    enrollment_id: i,
                    user_id,
                    course_id,
                    course_title: format!("Rust in Practice, part {course_id}"),
                    enrolled_at: now,
                })
                .await
                .map(|id| (id, CourseEnrolled::ROUTING_KEY)),
            _ => self
                .review
                .publish(&ReviewCreated {
                    review_id: i,
                    user_id,
                    course_id,
                    rating: (i % 5 + 1) as u8,
                    has_comment: i.is_multiple_of(3),
                    created_at: now,
                })
                .await
                .map(|id| (id, ReviewCreated::ROUTING_KEY)),
        };
        Ok(published?)
    }

    pub async fn shutdown(&self) -> CliResult<()> {
        self.auth.shutdown().await?;
        self.course.shutdown().await?;
        self.review.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_spread_and_stable() {
        let ids: Vec<String> = (0..10_000).map(|_| uuid_like()).collect();
        let below = ids.iter().filter(|i| unit_hash(i) < 0.1).count();
        assert!((700..1300).contains(&below), "{below}");
        assert_eq!(unit_hash("abc"), unit_hash("abc"));
    }

    fn uuid_like() -> String {
        format!("{:032x}", rand::random::<u128>())
    }
}
