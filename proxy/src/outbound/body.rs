//! The bodies of a request through the mesh: the request's, kept so a retry can send it
//! again, and the response's, held to the route's idle timeout and carrying what must
//! live as long as the response (the least-request count).
//!
//! A request body is forwarded as it arrives, never held back (a gRPC stream waits for
//! its answers before it sends more), and, when the route may retry, recorded as it
//! goes up to `REPLAY_LIMIT`. A retry replays the record and then goes on pulling from
//! the app. Past the limit the record is dropped and the request is not retried (as
//! Envoy's per-request buffer limit does).

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::balance::least::Started;
use crate::http::CallerBody;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The most of a request body kept for a retry: 64 KiB. Envoy keeps up to its
/// connection buffer limit (1 MiB by default); a sidecar with many requests in flight
/// keeps less, and requests larger than this are the ones not worth replaying.
pub(super) const REPLAY_LIMIT: usize = 64 * 1024;

/// When a request's stream last moved, either way (on tokio's clock, which tests pause).
pub(super) struct Activity {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves once nothing has moved for `limit`.
    pub(super) async fn idle_for(&self, limit: Duration) {
        loop {
            let deadline = self.last() + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A request body on its way to an instance.
pub(super) struct MeshBody {
    inner: Inner,
    activity: Option<Arc<Activity>>,
}

enum Inner {
    Stream(CallerBody),
    Replay(Replay),
}

impl MeshBody {
    /// `body` as it comes, never to be sent twice.
    pub(super) fn stream(body: CallerBody, activity: Option<Arc<Activity>>) -> MeshBody {
        MeshBody {
            inner: Inner::Stream(body),
            activity,
        }
    }

    /// `body`, recorded for retries; `Recorder::again` makes the body of the next try.
    pub(super) fn recorded<B>(body: B, activity: Option<Arc<Activity>>) -> (MeshBody, Recorder)
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let recorder = Recorder::new(body, REPLAY_LIMIT);
        let first = recorder.view(0);
        let body = MeshBody {
            inner: Inner::Replay(first),
            activity,
        };
        (body, recorder)
    }

    fn with(replay: Replay, activity: Option<Arc<Activity>>) -> MeshBody {
        MeshBody {
            inner: Inner::Replay(replay),
            activity,
        }
    }
}

impl Body for MeshBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.inner {
            Inner::Stream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Inner::Replay(replay) => Pin::new(replay).poll_frame(cx),
        };
        if let (Poll::Ready(Some(Ok(_))), Some(activity)) = (&polled, &self.activity) {
            activity.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Stream(body) => body.is_end_stream(),
            Inner::Replay(replay) => replay.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Stream(body) => body.size_hint(),
            Inner::Replay(replay) => replay.hint,
        }
    }
}

/// A frame as recorded.
enum Recorded {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Recorded {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Recorded::Data(data) => Frame::data(data.clone()),
            Recorded::Trailers(trailers) => Frame::trailers(trailers.clone()),
        }
    }
}

/// What every try of one request shares: the app's body, pulled by the current try
/// alone, and the record of what was pulled.
struct Recording {
    source: Option<UnsyncBoxBody<Bytes, BoxError>>,
    frames: Vec<Recorded>,
    bytes: usize,
    limit: usize,
    /// Past the limit, or the app's body failed: no try can follow.
    spoiled: bool,
    /// The try whose body this is; an earlier try's body stops.
    current: u64,
}

/// Makes the body of each try of one request.
pub(super) struct Recorder {
    shared: Arc<Mutex<Recording>>,
    hint: SizeHint,
}

impl Recorder {
    fn new<B>(body: B, limit: usize) -> Recorder
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let hint = body.size_hint();
        let source = (!body.is_end_stream()).then(|| body.map_err(Into::into).boxed_unsync());
        let recording = Recording {
            source,
            frames: Vec::new(),
            bytes: 0,
            limit,
            spoiled: false,
            current: 0,
        };
        Recorder {
            shared: Arc::new(Mutex::new(recording)),
            hint,
        }
    }

    fn view(&self, generation: u64) -> Replay {
        Replay {
            shared: self.shared.clone(),
            generation,
            cursor: 0,
            hint: self.hint,
        }
    }

    /// The body of the next try, replaying what the app sent so far; `None` if the
    /// request cannot be sent again (too large to keep, or the app's body failed).
    pub(super) fn again(&self, activity: Option<Arc<Activity>>) -> Option<MeshBody> {
        let generation = {
            let mut recording = self.shared.lock();
            if recording.spoiled {
                return None;
            }
            recording.current += 1;
            recording.current
        };
        Some(MeshBody::with(self.view(generation), activity))
    }
}

/// One try's view of a recorded body.
struct Replay {
    shared: Arc<Mutex<Recording>>,
    generation: u64,
    cursor: usize,
    hint: SizeHint,
}

/// The body of a try that was given up for a later one.
#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a retry")]
struct Superseded;

impl Replay {
    fn is_end_stream(&self) -> bool {
        let recording = self.shared.lock();
        recording.source.is_none() && self.cursor >= recording.frames.len()
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut recording = self.shared.lock();
        if recording.current != self.generation {
            return Poll::Ready(Some(Err(Superseded.into())));
        }
        if let Some(recorded) = recording.frames.get(self.cursor) {
            self.cursor += 1;
            return Poll::Ready(Some(Ok(recorded.frame())));
        }
        let Some(source) = recording.source.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                recording.source = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                recording.spoiled = true;
                recording.source = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                recording.record(&frame);
                self.cursor = recording.frames.len();
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }
}

impl Recording {
    /// Keeps a copy of `frame` while the record stays within its limit.
    fn record(&mut self, frame: &Frame<Bytes>) {
        if self.spoiled {
            return;
        }
        let recorded = if let Some(data) = frame.data_ref() {
            self.bytes += data.len();
            Recorded::Data(data.clone())
        } else if let Some(trailers) = frame.trailers_ref() {
            Recorded::Trailers(trailers.clone())
        } else {
            return;
        };
        if self.bytes > self.limit {
            self.spoiled = true;
            self.frames = Vec::new();
        } else {
            self.frames.push(recorded);
        }
    }
}

/// A response's body on its way to the app.
pub(super) struct OutBody {
    inner: Either<Incoming, Full<Bytes>>,
    idle: Option<Idle>,
    _in_flight: Option<Started>,
}

/// The route's idle timeout on a response body: reset by activity either way.
struct Idle {
    limit: Duration,
    activity: Arc<Activity>,
    timer: Pin<Box<tokio::time::Sleep>>,
}

/// A stream with no activity for the route's idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("stream idle timeout")]
struct IdleTimeout;

impl OutBody {
    pub(super) fn new(inner: Either<Incoming, Full<Bytes>>) -> OutBody {
        OutBody {
            inner,
            idle: None,
            _in_flight: None,
        }
    }

    /// Holds `started` (a request in flight) until the body is done.
    pub(super) fn in_flight(mut self, started: Option<Started>) -> OutBody {
        self._in_flight = started;
        self
    }

    /// Ends the body with an error once nothing has moved for `limit`.
    pub(super) fn idle(mut self, limit: Duration, activity: Arc<Activity>) -> OutBody {
        let timer = Box::pin(tokio::time::sleep_until(activity.last() + limit));
        self.idle = Some(Idle {
            limit,
            activity,
            timer,
        });
        self
    }
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let Some(idle) = self.idle.as_mut() else {
            return polled;
        };
        if polled.is_ready() {
            idle.activity.touch();
            return polled;
        }
        loop {
            let deadline = idle.activity.last() + idle.limit;
            if Instant::now() >= deadline {
                return Poll::Ready(Some(Err(IdleTimeout.into())));
            }
            idle.timer.as_mut().reset(deadline);
            if idle.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[path = "body/tests.rs"]
mod tests;
