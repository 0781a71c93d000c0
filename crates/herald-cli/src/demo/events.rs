//! The event contracts of reference 003 (KnowledgeNest): four facts on one topic exchange.

use chrono::{DateTime, Utc};
use herald::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A user finished registering.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, Event)]
#[event(name = "user.registered", publisher = "auth-service", consumers = ["notification-service", "analytics-service"], schema)]
pub struct UserRegistered {
    pub user_id: u64,
    pub email: String,
    pub name: String,
    pub registered_at: DateTime<Utc>,
}

/// An instructor published a new course.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, Event)]
#[event(name = "course.created", publisher = "course-service", consumers = ["notification-service", "analytics-service"], schema)]
pub struct CourseCreated {
    pub course_id: u64,
    pub title: String,
    pub instructor_id: u64,
    pub created_at: DateTime<Utc>,
}

/// A learner enrolled in a course.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, Event)]
#[event(name = "course.enrolled", publisher = "course-service", consumers = ["notification-service", "analytics-service"], schema)]
pub struct CourseEnrolled {
    pub enrollment_id: u64,
    pub user_id: u64,
    pub course_id: u64,
    pub course_title: String,
    pub enrolled_at: DateTime<Utc>,
}

/// A learner reviewed a course.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, Event)]
#[event(name = "review.created", publisher = "review-service", consumers = ["notification-service", "analytics-service"], schema)]
pub struct ReviewCreated {
    pub review_id: u64,
    pub user_id: u64,
    pub course_id: u64,
    #[schemars(range(min = 1, max = 5))]
    pub rating: u8,
    pub has_comment: bool,
    pub created_at: DateTime<Utc>,
}
