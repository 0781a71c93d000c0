//! Plain `async fn`s as handlers, axum-style: the framework decodes the body and adapts the
//! function; the user's code reads like the domain.
//!
//! Accepted shapes: `async fn(E) -> R` and `async fn(E, Context) -> R`, where `R` is `()` or
//! `Result<(), Err>` with `Err: Into<HandlerError>` (any `std::error::Error`, or a
//! [`HandlerError`] built with `transient`/`permanent`).

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::bus::Publisher;
use crate::context::Context;
use crate::middleware::{BoxFuture, FailureKind, Handle, HandlerError, HandlerResult, Message};

/// What a handler function may return.
pub trait IntoHandlerResult: Send {
    /// Convert to the pipeline's result.
    fn into_handler_result(self) -> HandlerResult;
}

impl IntoHandlerResult for () {
    fn into_handler_result(self) -> HandlerResult {
        Ok(())
    }
}

impl<E: Into<HandlerError> + Send> IntoHandlerResult for Result<(), E> {
    fn into_handler_result(self) -> HandlerResult {
        self.map_err(Into::into)
    }
}

/// A function that handles payloads of type `T`. `Args` tells the shapes apart; it is inferred.
pub trait Handler<T, Args>: Send + Sync + 'static {
    /// Call the function.
    fn call(&self, payload: T, ctx: Context) -> BoxFuture<HandlerResult>;
}

/// Marker for `async fn(T, Context)`.
pub struct WithContext;
/// Marker for `async fn(T)`.
pub struct PayloadOnly;

impl<F, Fut, T, R> Handler<T, WithContext> for F
where
    F: Fn(T, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoHandlerResult,
{
    fn call(&self, payload: T, ctx: Context) -> BoxFuture<HandlerResult> {
        let fut = self(payload, ctx);
        Box::pin(async move { fut.await.into_handler_result() })
    }
}

impl<F, Fut, T, R> Handler<T, PayloadOnly> for F
where
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoHandlerResult,
{
    fn call(&self, payload: T, _ctx: Context) -> BoxFuture<HandlerResult> {
        let fut = self(payload);
        Box::pin(async move { fut.await.into_handler_result() })
    }
}

/// The innermost `Handle`: decode the body into `T`, build the [`Context`], call the function.
pub(crate) struct Decoding<T, H, Args> {
    handler: H,
    publisher: Publisher,
    /// What the body should be, for the decode error ("`course.enrolled` v1 (CourseEnrolled)").
    expected: Arc<str>,
    _types: PhantomData<fn(T, Args)>,
}

impl<T, H, Args> Decoding<T, H, Args> {
    pub(crate) fn new(handler: H, publisher: Publisher, expected: String) -> Self {
        Decoding {
            handler,
            publisher,
            expected: Arc::from(expected),
            _types: PhantomData,
        }
    }
}

impl<T, H, Args> Handle for Decoding<T, H, Args>
where
    T: DeserializeOwned + Send + 'static,
    H: Handler<T, Args>,
    Args: 'static,
{
    fn call(&self, msg: Message) -> BoxFuture<HandlerResult> {
        let payload: T = match serde_json::from_slice(&msg.envelope.body) {
            Ok(p) => p,
            Err(e) => {
                let err = HandlerError::new(
                    FailureKind::Decode,
                    format!("could not decode the body as {}: {e}", self.expected),
                );
                return Box::pin(async move { Err(err) });
            }
        };
        let ctx = Context::new(msg.envelope, msg.queue, self.publisher.clone());
        self.handler.call(payload, ctx)
    }
}

/// The innermost `Handle` of [`Bus::subscribe_raw`](crate::Bus::subscribe_raw): nothing is
/// decoded; the function reads the body from the [`Context`]'s envelope as it arrived.
pub(crate) struct Undecoded<H> {
    handler: H,
    publisher: Publisher,
}

impl<H> Undecoded<H> {
    pub(crate) fn new(handler: H, publisher: Publisher) -> Self {
        Undecoded { handler, publisher }
    }
}

impl<H, Fut, R> Handle for Undecoded<H>
where
    H: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoHandlerResult,
{
    fn call(&self, msg: Message) -> BoxFuture<HandlerResult> {
        let fut = (self.handler)(Context::new(
            msg.envelope,
            msg.queue,
            self.publisher.clone(),
        ));
        Box::pin(async move { fut.await.into_handler_result() })
    }
}
