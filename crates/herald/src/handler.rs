//! Plain `async fn`s as handlers, axum-style: the framework decodes the body and adapts the
//! function; the user's code reads like the domain.
//!
//! Accepted shapes: `async fn(E) -> R` and `async fn(E, Context) -> R`, where `R` is `()` or
//! `Result<(), Err>` with `Err: Into<HandlerError>` (any `std::error::Error`, or a
//! [`HandlerError`] built with `transient`/`permanent`). Batch handlers
//! ([`Bus::subscribe_batch`](crate::Bus::subscribe_batch)) are `async fn(Vec<E>) -> R` where `R`
//! is one of those or a [`BatchResult`] saying which messages failed.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::envelope::Envelope;

use crate::context::Context;
use crate::middleware::{BoxFuture, FailureKind, Handle, HandlerError, HandlerResult, Message};
use crate::publisher::Publisher;

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

/// Decode a JSON body. The whole body's UTF-8 is checked once up front, which costs a fraction
/// of serde_json's check of every string in it (`from_slice`); a body that is not UTF-8 goes
/// through `from_slice` for the error message that says where.
pub(crate) fn decode_json<T: DeserializeOwned>(body: &[u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    }
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
        let payload: T = match decode_json(&msg.envelope.body) {
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

/// What a batch handler may return: `()` or `Result<(), E>` (one verdict for every message of
/// the batch), or a [`BatchResult`] (a verdict per message).
pub trait IntoBatchResult: Send {
    /// One result per message of a batch of `len`.
    fn into_results(self, len: usize) -> Vec<HandlerResult>;
}

impl IntoBatchResult for () {
    fn into_results(self, len: usize) -> Vec<HandlerResult> {
        vec![Ok(()); len]
    }
}

impl<E: Into<HandlerError> + Send> IntoBatchResult for Result<(), E> {
    fn into_results(self, len: usize) -> Vec<HandlerResult> {
        match self {
            Ok(()) => vec![Ok(()); len],
            Err(e) => vec![Err(e.into()); len],
        }
    }
}

/// Which messages of a batch failed; every other one succeeded. Indices are positions in the
/// `Vec` the handler was given.
///
/// ```
/// use herald::handler::BatchResult;
/// use herald::HandlerError;
/// let r = BatchResult::ok().fail(2, HandlerError::permanent("no such listing"));
/// # let _ = r;
/// ```
#[derive(Debug, Clone, Default)]
pub struct BatchResult {
    failed: Vec<(usize, HandlerError)>,
}

impl BatchResult {
    /// Every message succeeded (so far).
    pub fn ok() -> Self {
        Self::default()
    }

    /// The message at `index` failed with `error` (retried or dead-lettered on its own).
    pub fn fail(mut self, index: usize, error: impl Into<HandlerError>) -> Self {
        self.failed.push((index, error.into()));
        self
    }
}

impl IntoBatchResult for BatchResult {
    fn into_results(self, len: usize) -> Vec<HandlerResult> {
        let mut results = vec![Ok(()); len];
        for (i, e) in self.failed {
            if let Some(r) = results.get_mut(i) {
                *r = Err(e);
            }
        }
        results
    }
}

/// Runs a batch handler on the messages of one batch, answering one result per message.
pub(crate) trait RunBatch: Send + Sync + 'static {
    fn run(&self, envelopes: &[Arc<Envelope>]) -> BoxFuture<Vec<HandlerResult>>;
}

/// Decodes each message of a batch into `T` (those that do not decode fail on their own, as
/// [`FailureKind::Decode`]) and calls the function with the rest.
pub(crate) struct BatchDecoding<T, H> {
    handler: Arc<H>,
    expected: Arc<str>,
    _types: PhantomData<fn(T)>,
}

impl<T, H> BatchDecoding<T, H> {
    pub(crate) fn new(handler: H, expected: String) -> Self {
        BatchDecoding {
            handler: Arc::new(handler),
            expected: Arc::from(expected),
            _types: PhantomData,
        }
    }
}

impl<T, H, Fut, R> RunBatch for BatchDecoding<T, H>
where
    T: DeserializeOwned + Send + 'static,
    H: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoBatchResult,
{
    fn run(&self, envelopes: &[Arc<Envelope>]) -> BoxFuture<Vec<HandlerResult>> {
        let mut results: Vec<Option<HandlerResult>> = vec![None; envelopes.len()];
        let mut payloads = Vec::with_capacity(envelopes.len());
        let mut positions = Vec::with_capacity(envelopes.len());
        for (i, e) in envelopes.iter().enumerate() {
            match decode_json::<T>(&e.body) {
                Ok(p) => {
                    payloads.push(p);
                    positions.push(i);
                }
                Err(err) => {
                    results[i] = Some(Err(HandlerError::new(
                        FailureKind::Decode,
                        format!("could not decode the body as {}: {err}", self.expected),
                    )))
                }
            }
        }
        let n = payloads.len();
        let handler = self.handler.clone();
        Box::pin(async move {
            let verdicts = if n == 0 {
                Vec::new()
            } else {
                // Starting the call can panic too (a function that panics before its first
                // await): `guarded` covers both.
                match crate::middleware::guarded(move || async move { Ok(handler(payloads).await) })
                    .await
                {
                    Ok(r) => r.into_results(n),
                    Err(panicked) => vec![Err(panicked); n],
                }
            };
            for (i, v) in positions.into_iter().zip(verdicts) {
                results[i] = Some(v);
            }
            results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::decode_json;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Named {
        name: String,
    }

    #[test]
    fn bodies_decode_alike_whether_or_not_they_are_utf8() {
        let ok: Named = decode_json(b"{\"name\":\"caf\\u00e9 \xc3\xa9\"}").expect("valid UTF-8");
        assert_eq!(ok.name, "caf\u{e9} \u{e9}");
        let bad = decode_json::<Named>(b"{\"name\":\"\xff\"}").expect_err("invalid UTF-8");
        assert!(bad.to_string().contains("invalid unicode"), "{bad}");
        let not_json = decode_json::<Named>(b"{\"name\":").expect_err("truncated");
        assert!(not_json.is_eof(), "{not_json}");
    }
}
