//! Two services on one bus: course-service publishes, notification-service consumes and
//! publishes a follow-up in the same flow. Runs on the in-memory transport; pass a broker URL
//! (`sqlite://.herald/quickstart.db`, `amqp://guest:guest@127.0.0.1:5672/%2f`) to use another.
//!
//! `cargo run -p herald --example quickstart [BROKER_URL]`

use std::time::Duration;

use herald::middleware::RetryPolicy;
use herald::{Bus, Context, Event, HandlerError, SubscribeOptions};
use serde::{Deserialize, Serialize};

/// A learner enrolled in a course.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "course.enrolled", publisher = "course-service", consumers = ["notification-service"])]
struct CourseEnrolled {
    enrollment_id: u64,
    user_id: u64,
    course_title: String,
}

/// A confirmation email was queued.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "email.queued", publisher = "notification-service")]
struct EmailQueued {
    user_id: u64,
    template: String,
}

async fn on_enrolled(event: CourseEnrolled, ctx: Context) -> Result<(), HandlerError> {
    println!(
        "notification-service: {} enrolled in {:?} (attempt {})",
        event.user_id,
        event.course_title,
        ctx.attempt()
    );
    ctx.publish(&EmailQueued {
        user_id: event.user_id,
        template: "enrollment-confirmation".into(),
    })
    .await?;
    Ok(())
}

async fn on_email(event: EmailQueued, ctx: Context) {
    println!(
        "notification-service: email {:?} for {} (flow {}, caused by {})",
        event.template,
        event.user_id,
        ctx.correlation_id(),
        ctx.envelope().causation_id.as_deref().unwrap_or("-")
    );
}

#[tokio::main]
async fn main() -> herald::Result<()> {
    let broker = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://quickstart".into());
    let consumer = Bus::builder()
        .broker(&broker)
        .exchange("quickstart")
        .service("notification-service")
        .build()
        .await?;
    consumer.subscribe_with(
        on_enrolled,
        SubscribeOptions::new().retry(RetryPolicy::exponential(3, Duration::from_millis(100))),
    )?;
    consumer.subscribe(on_email)?;
    consumer.start().await?;
    println!("{}", consumer.topology());

    let courses = Bus::builder()
        .broker(&broker)
        .exchange("quickstart")
        .service("course-service")
        .build()
        .await?;
    let id = courses
        .publish(&CourseEnrolled {
            enrollment_id: 1,
            user_id: 42,
            course_title: "Rust in Practice".into(),
        })
        .await?;
    println!("course-service: published {id}");

    while consumer.metrics().handled < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    courses.shutdown().await?;
    consumer.shutdown().await
}
