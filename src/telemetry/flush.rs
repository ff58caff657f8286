//! Spans sent before a serverless platform freezes the function.
//!
//! Lambda freezes an instance once its invocation's response is over, and
//! Vercel may too; spans still in the batch would wait for the next
//! invocation, or be lost. So on those doors each response's body, once its
//! last frame is out, flushes the exporters before it ends. The client has
//! every event by then, `done` included: the flush costs the close of the
//! stream, not the time to an event.
//!
//! `lambda_runtime`'s own `opentelemetry` layer flushes when the handler's
//! future completes, which for a streamed response is when its head is
//! ready, before the run has even begun; hence this body wrapper.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use http_body::Frame;

use super::Telemetry;

/// Wraps `response`'s body so that it flushes `telemetry` before it ends.
/// With export off the response is returned as it is.
pub fn at_end(response: Response, telemetry: Telemetry) -> Response {
    if !telemetry.is_on() {
        return response;
    }
    response.map(|body| {
        Body::new(FlushingBody {
            inner: body,
            telemetry,
            state: State::Streaming,
        })
    })
}

struct FlushingBody {
    inner: Body,
    telemetry: Telemetry,
    state: State,
}

enum State {
    /// Passing the inner body's frames on.
    Streaming,
    /// The inner body has ended; the exporters are flushing.
    Flushing(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// Flushed: the body is over.
    Ended,
}

impl http_body::Body for FlushingBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Streaming => match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Ready(None) => {
                        let telemetry = this.telemetry.clone();
                        this.state =
                            State::Flushing(Box::pin(async move { telemetry.flush().await }));
                    }
                    other => return other,
                },
                State::Flushing(flush) => {
                    std::task::ready!(flush.as_mut().poll(cx));
                    this.state = State::Ended;
                }
                State::Ended => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Ended)
    }
}
