//! The replayable request body.
//!
//! A unary (or server-streaming) request from a generated client is one message whose bytes are
//! ready when the call starts: [`CallBody::new`] reads it at once, and every attempt sends the
//! same `Bytes` (zero-copy), with no shared state at all. Any other body is replayed: each
//! attempt replays what earlier attempts read, then goes on reading the caller's body, so a failed attempt that read only part of the body (or none of it:
//! a refused connection reads nothing) loses nothing.
//!
//! The state lives behind one `Arc<Mutex<_>>` shared by the call's future and each attempt's body,
//! in the manner of linkerd2-proxy's `ReplayBody`. Retries run one after another, so the lock is
//! never contended; a superseded attempt that its transport still polls gets an error instead of
//! racing the current one for the caller's body.
//!
//! Hedged attempts run at the same time, each with a reader of its own over the same chunks
//! (`tower::hedge` cannot do this: it needs a request it can clone). Whichever reader is ahead
//! reads the caller's body; the others follow from the held chunks. Until the call commits every
//! chunk is held, within the same limits as for retries; a request that outgrows them keeps the
//! reader that read furthest and cuts the others, which cannot be given what is no longer held.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;

/// Bytes held for replay by every call of one layer, bounded so that memory stays bounded under
/// load: a call that cannot reserve room is sent on unbuffered, and is no longer retryable.
#[derive(Debug)]
pub(crate) struct BufferBudget {
    used: AtomicUsize,
    limit: usize,
}

impl BufferBudget {
    pub(crate) fn new(limit: usize) -> BufferBudget {
        BufferBudget {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    fn try_reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        // Nothing to give back is common (a committed call, a request that was not kept), and an
        // atomic subtraction of 0 costs as much as any other.
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// Bytes currently held for replay.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// A call's request body, kept so that every attempt can send it.
#[derive(Debug)]
pub(crate) enum CallBody {
    /// The whole request was ready when the call started.
    Whole(WholeRequest),
    /// The request streams (or was not ready): replayed through shared state.
    Streamed(ReplayHandle),
}

/// Which reader of the request a hedged attempt's body is (the generation of its
/// [`ReplayBody`]; 0 for a whole request, which every attempt reads from a copy of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReaderId(u32);

/// The first attempt's reader: the body's first generation.
pub(crate) const FIRST_READER: ReaderId = ReaderId(1);

/// A request read whole at the start of the call.
#[derive(Debug)]
pub(crate) struct WholeRequest {
    /// The request: while `kept`, kept for every attempt; otherwise (too large to keep) until the
    /// first attempt takes it.
    bytes: Option<Bytes>,
    /// Whether `bytes` are kept for replay, their length reserved in the layer's budget. Given
    /// back by [`CallBody::commit`] or [`CallBody::release`] (which the call's drop runs): the
    /// budget is the call's to pass in, not a handle kept here, which would be an `Arc` clone
    /// and drop per call, two atomic operations on the happy path.
    kept: bool,
    /// Whether the caller's body knew its size exactly. Each attempt's body says so only then:
    /// hyper sends a `content-length` with a body whose size is exact, and tonic's own request
    /// body never knows it, so a retried request would gain a header its first attempt (and a
    /// plain client) never sent.
    exact: bool,
}

impl WholeRequest {
    #[inline]
    fn body(&self, bytes: Bytes) -> Body {
        if bytes.is_empty() {
            Body::empty()
        } else {
            Body::new(WholeBody {
                bytes: Some(bytes),
                exact: self.exact,
            })
        }
    }

    /// Stops keeping the request and gives its bytes back to `budget`.
    fn give_back(&mut self, budget: &BufferBudget) {
        if std::mem::take(&mut self.kept) {
            budget.release(self.bytes.take().map_or(0, |bytes| bytes.len()));
        }
    }
}

impl Drop for WholeRequest {
    fn drop(&mut self) {
        debug_assert!(
            !self.kept
                || self.bytes.as_ref().is_none_or(Bytes::is_empty)
                || std::thread::panicking(),
            "a kept request dropped without giving its bytes back to the layer's budget"
        );
    }
}

impl CallBody {
    /// Reads what of `body` is ready now (without waiting: a generated client's unary body is
    /// ready at once) and keeps it for replay within `limit` and the layer's `budget`.
    pub(crate) fn new(mut body: Body, limit: usize, budget: &Arc<BufferBudget>) -> CallBody {
        let size_hint = body.size_hint();
        let exact = size_hint.exact().is_some();
        if body.is_end_stream() {
            return CallBody::whole(Bytes::new(), exact, limit, budget);
        }
        // Polling with a no-op waker is sound: a body that is not ready registers the real
        // waker when an attempt polls it again.
        let mut cx = Context::from_waker(Waker::noop());
        let first = match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(None) => return CallBody::whole(Bytes::new(), exact, limit, budget),
            Poll::Pending => None,
            Poll::Ready(Some(frame)) => Some(frame),
        };
        let second = match &first {
            // A body that knows it ended (`Full` does) needs no second poll to say so.
            Some(Ok(frame)) if frame.is_data() && body.is_end_stream() => {
                let bytes = first
                    .and_then(|frame| frame.ok()?.into_data().ok())
                    .unwrap_or_default();
                return CallBody::whole(bytes, exact, limit, budget);
            }
            Some(Ok(frame)) if frame.is_data() => match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(None) => {
                    let bytes = first
                        .and_then(|frame| frame.ok()?.into_data().ok())
                        .unwrap_or_default();
                    return CallBody::whole(bytes, exact, limit, budget);
                }
                Poll::Pending => None,
                Poll::Ready(Some(frame)) => Some(frame),
            },
            _ => None,
        };
        CallBody::Streamed(ReplayHandle::with_prefetched(
            [first, second],
            Some(body),
            size_hint,
            limit,
            Arc::clone(budget),
        ))
    }

    fn whole(bytes: Bytes, exact: bool, limit: usize, budget: &BufferBudget) -> CallBody {
        let fits = bytes.len() <= limit && budget.try_reserve(bytes.len());
        CallBody::Whole(WholeRequest {
            bytes: Some(bytes),
            kept: fits,
            exact,
        })
    }

    /// The first attempt's body.
    pub(crate) fn first_attempt(&mut self) -> Body {
        match self {
            CallBody::Whole(whole) => {
                let bytes = if whole.kept {
                    whole.bytes.clone()
                } else {
                    whole.bytes.take()
                };
                whole.body(bytes.unwrap_or_default())
            }
            CallBody::Streamed(handle) => Body::new(handle.first_attempt()),
        }
    }

    /// The next attempt's body, or `None` when the request can no longer be replayed.
    pub(crate) fn next_attempt(&mut self) -> Option<Body> {
        match self {
            CallBody::Whole(whole) if whole.kept => {
                whole.bytes.clone().map(|bytes| whole.body(bytes))
            }
            CallBody::Whole(_) => None,
            CallBody::Streamed(handle) => handle.next_attempt().map(Body::new),
        }
    }

    /// Readies a hedged call's body, before its first attempt: see [`ReplayHandle::enable_hedging`].
    pub(crate) fn enable_hedging(&mut self) {
        if let CallBody::Streamed(handle) = self {
            handle.enable_hedging();
        }
    }

    /// A hedged attempt's body and its reader (to close or commit to), read side by side with
    /// the attempts in flight; `None` when the request can no longer be replayed. The first
    /// attempt's reader is [`FIRST_READER`].
    pub(crate) fn hedge_attempt(&mut self) -> Option<(Body, ReaderId)> {
        match self {
            CallBody::Whole(_) => self.next_attempt().map(|body| (body, ReaderId(0))),
            CallBody::Streamed(handle) => {
                let body = handle.hedge_attempt()?;
                let reader = ReaderId(body.generation());
                Some((Body::new(body), reader))
            }
        }
    }

    /// The hedged attempt that read through `reader` ended: another can take its place.
    pub(crate) fn close_reader(&mut self, reader: ReaderId) {
        if let CallBody::Streamed(handle) = self {
            handle.close_reader(reader.0);
        }
    }

    /// Whether the hedged attempt that reads through `reader` can still send the whole request:
    /// not once the request outgrew the buffer while it lagged behind another.
    pub(crate) fn reader_live(&self, reader: ReaderId) -> bool {
        match self {
            CallBody::Whole(_) => true,
            CallBody::Streamed(handle) => handle.is_live(reader.0),
        }
    }

    /// A hedged call committed to the attempt that reads through `reader`.
    pub(crate) fn commit_to(&mut self, reader: ReaderId, budget: &BufferBudget) {
        match self {
            CallBody::Whole(_) => self.commit(budget),
            CallBody::Streamed(handle) => handle.commit_to(reader.0),
        }
    }

    /// Whether another attempt could send the whole request again.
    pub(crate) fn replayable(&self) -> bool {
        match self {
            CallBody::Whole(whole) => whole.kept && whole.bytes.is_some(),
            CallBody::Streamed(handle) => handle.replayable(),
        }
    }

    /// The call committed: free the buffer, and give its bytes back to `budget` (the layer's,
    /// the one [`CallBody::new`] reserved them in).
    pub(crate) fn commit(&mut self, budget: &BufferBudget) {
        match self {
            CallBody::Whole(whole) => {
                whole.give_back(budget);
                whole.bytes = None;
            }
            CallBody::Streamed(handle) => handle.commit(),
        }
    }

    /// Gives back to `budget` what a whole request still holds of it: the call's drop runs this.
    /// (A streamed request's shared state gives its own back when its last reader goes.)
    #[inline]
    pub(crate) fn release(&mut self, budget: &BufferBudget) {
        if let CallBody::Whole(whole) = self {
            whole.give_back(budget);
        }
    }
}

/// One attempt's copy of a whole request: one data frame.
#[derive(Debug)]
struct WholeBody {
    bytes: Option<Bytes>,
    /// Whether to say the size exactly: see [`WholeRequest::exact`].
    exact: bool,
}

impl HttpBody for WholeBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(
            self.get_mut()
                .bytes
                .take()
                .map(|bytes| Ok(Frame::data(bytes))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.bytes.as_ref().map_or(0, |bytes| bytes.len() as u64))
        } else {
            SizeHint::default()
        }
    }
}

/// The future's handle on the call's body: makes each attempt's body.
#[derive(Debug)]
pub(crate) struct ReplayHandle {
    shared: Arc<Mutex<BodyState>>,
}

#[derive(Debug)]
struct BodyState {
    /// Frames read from the caller's body before the first attempt, oldest first.
    prefetched: [Option<Result<Frame<Bytes>, Status>>; 2],
    /// The rest of the caller's body; `None` once it ended.
    source: Option<Body>,
    /// The chunks held: while buffering, every chunk read from the source after the first
    /// `released`; once the call committed, only those the live attempt has not been given yet.
    chunks: VecDeque<Bytes>,
    /// Chunks read from the source (and recorded) that are no longer held.
    released: usize,
    trailers: Option<HeaderMap>,
    /// Bytes held in `chunks`, reserved in the layer's budget.
    buffered: usize,
    limit: usize,
    budget: Arc<BufferBudget>,
    mode: Mode,
    /// The attempts allowed to read: a retry uses the first only, and supersedes the attempt
    /// before it; hedged attempts read side by side.
    readers: [Reader; MAX_READERS],
    /// The last reader's identity handed out: an attempt's body is live while its reader's
    /// generation is still its own.
    generation: u32,
    /// Wakes every hedged reader waiting for the caller's body, whichever of them polled it
    /// last; made for a hedged call before its first attempt reads.
    source_wakers: Option<Arc<SourceWakers>>,
    size_hint: SizeHint,
}

/// Attempts of one call that may read the request at once: gRFC A6 caps hedged attempts at 5.
pub(crate) const MAX_READERS: usize = 5;

/// One live attempt's place in the request.
#[derive(Debug, Clone, Copy, Default)]
struct Reader {
    /// Whose body this reader is; 0 for none.
    generation: u32,
    /// Recorded chunks this reader has been given, counted from the body's start.
    position: usize,
    /// Whether this reader has been given the trailers.
    trailers_sent: bool,
}

/// The wakers of the readers waiting for the caller's body. The body remembers only the waker of
/// its last poll; polling it with this one instead wakes every reader that waits, so that one
/// whose transport stopped polling it (its stream out of flow-control window, say) cannot stall
/// the others.
#[derive(Debug, Default)]
struct SourceWakers {
    waiting: Mutex<Vec<Waker>>,
}

impl SourceWakers {
    fn register(&self, waker: &Waker) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if !waiting.iter().any(|known| known.will_wake(waker)) {
            waiting.push(waker.clone());
        }
    }

    fn wake_all(&self) {
        let waiting =
            std::mem::take(&mut *self.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        for waker in waiting {
            waker.wake();
        }
    }
}

impl Wake for SourceWakers {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Keeping every chunk: the request can be replayed.
    Buffering,
    /// The request outgrew the buffer (or the source failed): it cannot be replayed.
    Unreplayable,
    /// The call committed: nothing more is recorded, and each chunk still held is freed once the
    /// live attempt has been given it.
    Committed,
}

impl BodyState {
    /// The next frame of the caller's body: what was prefetched first, then the body itself.
    fn poll_source(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(frame) = self.prefetched[0].take() {
            self.prefetched.swap(0, 1);
            return Poll::Ready(Some(frame));
        }
        match self.source.as_mut() {
            Some(source) => Pin::new(source).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn source_ended(&self) -> bool {
        self.prefetched[0].is_none() && self.source.is_none()
    }

    /// Chunks recorded so far, held or released.
    fn recorded(&self) -> usize {
        self.released + self.chunks.len()
    }

    /// The recorded chunk `reader` sends next, if it is held.
    fn next_recorded(&self, reader: usize) -> Option<&Bytes> {
        let position = self.readers[reader].position;
        self.chunks.get(position.checked_sub(self.released)?)
    }

    /// The reader of the body whose identity is `generation`, if it is still live.
    fn live_reader(&self, generation: u32) -> Option<usize> {
        if generation == 0 {
            return None;
        }
        self.readers
            .iter()
            .position(|reader| reader.generation == generation)
    }

    /// How far the live reader furthest behind has got: chunks before it are no one's to send.
    fn slowest_position(&self) -> usize {
        self.readers
            .iter()
            .filter(|reader| reader.generation != 0)
            .map(|reader| reader.position)
            .min()
            .unwrap_or(usize::MAX)
    }

    /// Makes `reader` a new attempt's, from the body's start.
    fn open_reader(&mut self, reader: usize) -> u32 {
        self.generation = self.generation.wrapping_add(1).max(1);
        self.readers[reader] = Reader {
            generation: self.generation,
            position: 0,
            trailers_sent: false,
        };
        self.generation
    }

    /// Cuts every reader but `keep`: their attempts get an error on their next read.
    fn keep_only(&mut self, keep: usize) {
        for (index, reader) in self.readers.iter_mut().enumerate() {
            if index != keep {
                *reader = Reader::default();
            }
        }
        self.wake_readers();
    }

    /// Wakes the hedged readers waiting for the caller's body: one of them got something.
    fn wake_readers(&self) {
        if let Some(wakers) = &self.source_wakers {
            wakers.wake_all();
        }
    }

    /// Records a chunk that `reader` read from the source, if the request is still kept.
    fn record(&mut self, chunk: &Bytes, reader: usize) -> bool {
        if self.mode != Mode::Buffering {
            return false;
        }
        let len = chunk.len();
        let fits = self
            .buffered
            .checked_add(len)
            .is_some_and(|total| total <= self.limit);
        if !fits || !self.budget.try_reserve(len) {
            // Only a reader that has been given every held chunk reads the source: dropping
            // them loses nothing it still needs. Hedged readers behind it would need them: cut.
            self.mode = Mode::Unreplayable;
            self.keep_only(reader);
            self.release_given();
            return false;
        }
        self.buffered += len;
        self.chunks.push_back(chunk.clone());
        true
    }

    /// Frees the chunks every live reader has been given: once the request cannot be replayed
    /// (or need not be), only those ahead of them are still needed.
    fn release_given(&mut self) {
        let given = self.slowest_position();
        while self.released < given {
            let Some(chunk) = self.chunks.pop_front() else {
                break;
            };
            self.released += 1;
            self.buffered -= chunk.len();
            self.budget.release(chunk.len());
        }
    }
}

impl Drop for BodyState {
    fn drop(&mut self) {
        self.budget.release(self.buffered);
    }
}

fn lock(shared: &Mutex<BodyState>) -> MutexGuard<'_, BodyState> {
    // A panic in the caller's body while we held the lock leaves consistent state behind: every
    // field is updated before anything that could panic is called.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ReplayHandle {
    #[cfg(test)]
    pub(crate) fn new(body: Body, limit: usize, budget: Arc<BufferBudget>) -> ReplayHandle {
        let size_hint = body.size_hint();
        let source = (!body.is_end_stream()).then_some(body);
        ReplayHandle::with_prefetched([None, None], source, size_hint, limit, budget)
    }

    fn with_prefetched(
        prefetched: [Option<Result<Frame<Bytes>, Status>>; 2],
        source: Option<Body>,
        size_hint: SizeHint,
        limit: usize,
        budget: Arc<BufferBudget>,
    ) -> ReplayHandle {
        ReplayHandle {
            shared: Arc::new(Mutex::new(BodyState {
                prefetched,
                source,
                chunks: VecDeque::new(),
                released: 0,
                trailers: None,
                buffered: 0,
                limit,
                budget,
                mode: Mode::Buffering,
                readers: [Reader::default(); MAX_READERS],
                generation: 0,
                source_wakers: None,
                size_hint,
            })),
        }
    }

    /// The first attempt's body.
    pub(crate) fn first_attempt(&self) -> ReplayBody {
        self.attempt_body(&mut lock(&self.shared))
    }

    /// The body for the next attempt, or `None` when the request can no longer be replayed.
    pub(crate) fn next_attempt(&self) -> Option<ReplayBody> {
        let mut state = lock(&self.shared);
        (state.mode == Mode::Buffering).then(|| self.attempt_body(&mut state))
    }

    /// A retry's body: it takes the first reader, and supersedes the attempt that had it.
    fn attempt_body(&self, state: &mut BodyState) -> ReplayBody {
        ReplayBody {
            shared: Arc::clone(&self.shared),
            generation: state.open_reader(0),
        }
    }

    /// Readies the body for hedged attempts, before the first attempt reads it: from now on the
    /// caller's body wakes every reader that waits for it.
    pub(crate) fn enable_hedging(&self) {
        lock(&self.shared)
            .source_wakers
            .get_or_insert_with(|| Arc::new(SourceWakers::default()));
    }

    /// A hedged attempt's body, read side by side with the bodies of the attempts in flight, or
    /// `None` when the request can no longer be replayed (or `MAX_READERS` attempts read it).
    pub(crate) fn hedge_attempt(&self) -> Option<ReplayBody> {
        let mut state = lock(&self.shared);
        if state.mode != Mode::Buffering {
            return None;
        }
        let free = state
            .readers
            .iter()
            .position(|reader| reader.generation == 0)?;
        Some(ReplayBody {
            shared: Arc::clone(&self.shared),
            generation: state.open_reader(free),
        })
    }

    /// Whether the body whose identity is `generation` is still read.
    pub(crate) fn is_live(&self, generation: u32) -> bool {
        lock(&self.shared).live_reader(generation).is_some()
    }

    /// The hedged attempt whose body is `generation` ended: its reader is free for another.
    pub(crate) fn close_reader(&self, generation: u32) {
        let mut state = lock(&self.shared);
        if let Some(reader) = state.live_reader(generation) {
            state.readers[reader] = Reader::default();
            // The caller's body may have been going to wake that one only.
            state.wake_readers();
            if state.mode != Mode::Buffering {
                state.release_given();
            }
        }
    }

    /// Whether another attempt could send the whole request again.
    pub(crate) fn replayable(&self) -> bool {
        lock(&self.shared).mode == Mode::Buffering
    }

    /// The call committed: record nothing more, and free what the live attempt has sent. The
    /// chunks it has not been given yet (a call can commit in the middle of a replay) stay until
    /// it has them.
    pub(crate) fn commit(&self) {
        let mut state = lock(&self.shared);
        if state.mode == Mode::Buffering {
            state.mode = Mode::Committed;
        }
        state.release_given();
    }

    /// A hedged call committed to the attempt whose body is `generation`: the others' readers
    /// are cut, and what the winner has sent is freed.
    pub(crate) fn commit_to(&self, generation: u32) {
        let mut state = lock(&self.shared);
        let winner = state.live_reader(generation).unwrap_or(MAX_READERS);
        state.keep_only(winner);
        if state.mode == Mode::Buffering {
            state.mode = Mode::Committed;
        }
        state.release_given();
    }
}

/// One attempt's request body.
#[derive(Debug)]
pub(crate) struct ReplayBody {
    shared: Arc<Mutex<BodyState>>,
    generation: u32,
}

impl ReplayBody {
    /// This body's identity, to close its reader or commit to it.
    pub(crate) fn generation(&self) -> u32 {
        self.generation
    }
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let mut state = lock(&this.shared);
        let Some(reader) = state.live_reader(this.generation) else {
            return Poll::Ready(Some(Err(Status::cancelled(
                "request body superseded by another attempt",
            ))));
        };
        if let Some(chunk) = state.next_recorded(reader) {
            let chunk = chunk.clone();
            state.readers[reader].position += 1;
            if state.mode != Mode::Buffering {
                state.release_given();
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if state.source_ended() {
            if !state.readers[reader].trailers_sent
                && let Some(trailers) = state.trailers.clone()
            {
                state.readers[reader].trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        }
        let polled = match state.source_wakers.clone() {
            // Hedged readers: the caller's body wakes them all.
            Some(wakers) => {
                wakers.register(cx.waker());
                let waker = Waker::from(wakers);
                state.poll_source(&mut Context::from_waker(&waker))
            }
            None => state.poll_source(cx),
        };
        let frame = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        // Whatever it was, the hedged readers waiting for it can go on now.
        state.wake_readers();
        match frame {
            None => {
                state.source = None;
                Poll::Ready(None)
            }
            Some(Ok(frame)) => {
                if let Some(chunk) = frame.data_ref() {
                    // A chunk counts as given to this attempt only if it is now recorded: the
                    // position counts recorded chunks.
                    if state.record(chunk, reader) {
                        state.readers[reader].position += 1;
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    state.trailers = Some(trailers.clone());
                    state.readers[reader].trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(status)) => {
                // What the caller's body failed to produce cannot be replayed.
                state.mode = Mode::Unreplayable;
                state.keep_only(reader);
                state.release_given();
                Poll::Ready(Some(Err(status)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let state = lock(&self.shared);
        let Some(reader) = state.live_reader(self.generation) else {
            return false;
        };
        let reader = &state.readers[reader];
        state.source_ended()
            && reader.position >= state.recorded()
            && (reader.trailers_sent || state.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        // Every attempt sends the whole request, so the caller's hint holds for each.
        lock(&self.shared).size_hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn body_of(chunks: &[&'static [u8]]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, Status>> = chunks
            .iter()
            .map(|chunk| Ok(Frame::data(Bytes::from_static(chunk))))
            .collect();
        Body::new(StreamBody::new(futures::stream::iter(frames)))
    }

    async fn read_all(body: ReplayBody) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    fn budget() -> Arc<BufferBudget> {
        Arc::new(BufferBudget::new(1 << 20))
    }

    async fn read_body(body: Body) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_ready_single_message_is_kept_whole_without_shared_state() {
        let budget = budget();
        let mut call = CallBody::new(body_of(&[b"unary"]), 1024, &budget);
        assert!(matches!(call, CallBody::Whole(_)));
        assert_eq!(read_body(call.first_attempt()).await, b"unary");
        assert!(call.replayable());
        assert_eq!(read_body(call.next_attempt().unwrap()).await, b"unary");
        assert_eq!(budget.used(), 5);
        call.commit(&budget);
        assert_eq!(budget.used(), 0);
        assert!(call.next_attempt().is_none());
    }

    #[tokio::test]
    async fn a_whole_request_dropped_uncommitted_gives_its_bytes_back_once() {
        let budget = budget();
        let mut call = CallBody::new(body_of(&[b"unary"]), 1024, &budget);
        assert_eq!(budget.used(), 5);
        call.release(&budget);
        assert_eq!(budget.used(), 0);
        call.release(&budget);
        call.commit(&budget);
        assert_eq!(budget.used(), 0, "given back once, not three times");
    }

    #[tokio::test]
    async fn a_whole_request_over_the_limit_is_sent_once() {
        let budget = budget();
        let mut call = CallBody::new(body_of(&[b"too large"]), 4, &budget);
        assert_eq!(read_body(call.first_attempt()).await, b"too large");
        assert!(!call.replayable());
        assert!(call.next_attempt().is_none());
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn frames_read_ahead_are_replayed_with_the_rest() {
        let budget = budget();
        let mut call = CallBody::new(body_of(&[b"ab", b"cd", b"ef"]), 1024, &budget);
        assert!(matches!(call, CallBody::Streamed(_)));
        assert_eq!(read_body(call.first_attempt()).await, b"abcdef");
        assert_eq!(read_body(call.next_attempt().unwrap()).await, b"abcdef");
        drop(call);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn an_empty_body_stays_empty() {
        let mut call = CallBody::new(Body::empty(), 1024, &budget());
        assert!(call.first_attempt().is_end_stream());
        assert!(call.next_attempt().unwrap().is_end_stream());
    }

    #[tokio::test]
    async fn every_attempt_sees_the_whole_body() {
        let handle = ReplayHandle::new(body_of(&[b"ab", b"cd", b"ef"]), 1024, budget());
        assert_eq!(read_all(handle.next_attempt().unwrap()).await, b"abcdef");
        assert_eq!(read_all(handle.next_attempt().unwrap()).await, b"abcdef");
    }

    #[tokio::test]
    async fn an_attempt_that_read_nothing_loses_nothing() {
        let handle = ReplayHandle::new(body_of(&[b"ab", b"cd"]), 1024, budget());
        drop(handle.next_attempt());
        assert_eq!(read_all(handle.next_attempt().unwrap()).await, b"abcd");
    }

    #[tokio::test]
    async fn a_partly_read_body_is_replayed_then_continued() {
        let handle = ReplayHandle::new(body_of(&[b"ab", b"cd", b"ef"]), 1024, budget());
        let mut first = handle.next_attempt().unwrap();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        drop(first);
        assert_eq!(read_all(handle.next_attempt().unwrap()).await, b"abcdef");
    }

    #[tokio::test]
    async fn a_superseded_attempt_gets_an_error() {
        let handle = ReplayHandle::new(body_of(&[b"ab"]), 1024, budget());
        let mut old = handle.next_attempt().unwrap();
        let _new = handle.next_attempt().unwrap();
        assert!(old.frame().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn over_the_limit_is_sent_intact_but_not_replayable() {
        let handle = ReplayHandle::new(body_of(&[b"abcd", b"efgh", b"ij"]), 6, budget());
        assert_eq!(
            read_all(handle.next_attempt().unwrap()).await,
            b"abcdefghij"
        );
        assert!(!handle.replayable());
        assert!(handle.next_attempt().is_none());
    }

    #[tokio::test]
    async fn a_commit_in_the_middle_of_a_replay_loses_nothing() {
        let chunks: [&'static [u8]; 6] = [b"0", b"1", b"2", b"3", b"4", b"5"];
        let budget = budget();
        let handle = ReplayHandle::new(body_of(&chunks), 1024, Arc::clone(&budget));
        let mut first = handle.first_attempt();
        for _ in 0..3 {
            first.frame().await.unwrap().unwrap();
        }
        drop(first);
        let mut retry = handle.next_attempt().unwrap();
        let mut sent = Vec::new();
        sent.extend_from_slice(&retry.frame().await.unwrap().unwrap().into_data().unwrap());
        // The retry's response headers arrive while it still replays "1" and "2".
        handle.commit();
        assert_eq!(
            budget.used(),
            2,
            "what the live attempt sent is freed, the rest kept"
        );
        sent.extend_from_slice(&read_all(retry).await);
        assert_eq!(sent, b"012345");
        assert_eq!(budget.used(), 0);
        assert!(handle.next_attempt().is_none());
    }

    #[tokio::test]
    async fn trailers_are_replayed_once_after_the_data() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, Status>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let body = Body::new(StreamBody::new(futures::stream::iter(frames)));
        let handle = ReplayHandle::new(body, 1024, budget());
        for _ in 0..2 {
            let collected = handle.next_attempt().unwrap().collect().await.unwrap();
            assert_eq!(collected.trailers(), Some(&trailers));
            assert_eq!(collected.to_bytes(), "ab");
        }
    }

    #[tokio::test]
    async fn outgrowing_the_limit_during_a_retry_sends_everything() {
        let handle = ReplayHandle::new(body_of(&[b"ab", b"cd", b"efgh"]), 5, budget());
        let mut first = handle.first_attempt();
        first.frame().await.unwrap().unwrap();
        drop(first);
        let retry = handle.next_attempt().unwrap();
        assert_eq!(read_all(retry).await, b"abcdefgh");
        assert!(!handle.replayable());
        assert!(handle.next_attempt().is_none());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// The request `chunks` make, kept for replay within `limit`, and the layer budget it
        /// reserves in.
        fn replay_of(
            chunks: &[Vec<u8>],
            limit: usize,
        ) -> (Vec<u8>, ReplayHandle, Arc<BufferBudget>) {
            let frames: Vec<Result<Frame<Bytes>, Status>> = chunks
                .iter()
                .map(|chunk| Ok(Frame::data(Bytes::from(chunk.clone()))))
                .collect();
            let budget = Arc::new(BufferBudget::new(1 << 20));
            let handle = ReplayHandle::new(
                Body::new(StreamBody::new(futures::stream::iter(frames))),
                limit,
                Arc::clone(&budget),
            );
            (chunks.concat(), handle, budget)
        }

        /// A request body: up to 12 chunks of up to 5 bytes (empty chunks included).
        fn chunks_strategy() -> impl Strategy<Value = Vec<Vec<u8>>> {
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 0..12)
        }

        proptest! {
            /// Attempts fail after reading `failed_reads[i]` frames; the last one commits after
            /// `commit_after` frames, possibly in the middle of its replay.
            #[test]
            fn the_final_attempt_sends_exactly_the_original_bytes(
                chunks in chunks_strategy(),
                failed_reads in proptest::collection::vec(0usize..16, 0..4),
                commit_after in 0usize..16,
                limit in 0usize..80,
            ) {
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                runtime.block_on(async {
                    let (original, handle, budget) = replay_of(&chunks, limit);
                    let mut attempt = handle.first_attempt();
                    let mut sent = Vec::new();
                    for reads in failed_reads {
                        for _ in 0..reads {
                            match attempt.frame().await {
                                Some(frame) => sent.extend_from_slice(
                                    &frame.unwrap().into_data().unwrap(),
                                ),
                                None => break,
                            }
                        }
                        prop_assert!(original.starts_with(&sent), "a prefix, in order");
                        match handle.next_attempt() {
                            Some(next) => {
                                attempt = next;
                                sent.clear();
                            }
                            // Not replayable: the live attempt is the last one.
                            None => break,
                        }
                    }
                    let mut frames_read = 0;
                    loop {
                        if frames_read == commit_after {
                            handle.commit();
                        }
                        match attempt.frame().await {
                            Some(frame) => {
                                sent.extend_from_slice(&frame.unwrap().into_data().unwrap());
                                frames_read += 1;
                            }
                            None => break,
                        }
                    }
                    handle.commit();
                    prop_assert_eq!(sent, original);
                    drop(attempt);
                    drop(handle);
                    prop_assert_eq!(budget.used(), 0);
                    Ok(())
                })?;
            }
        }

        /// What the property below does to one hedged reader.
        #[derive(Debug, Clone)]
        enum HedgeStep {
            /// Read one frame through reader `n` (modulo those live).
            Read(usize),
            /// Open another hedged reader.
            Hedge,
            /// Close reader `n`: its attempt failed.
            Close(usize),
        }

        fn hedge_steps() -> impl Strategy<Value = Vec<HedgeStep>> {
            let step = prop_oneof![
                4 => (0usize..5).prop_map(HedgeStep::Read),
                1 => Just(HedgeStep::Hedge),
                1 => (0usize..5).prop_map(HedgeStep::Close),
            ];
            proptest::collection::vec(step, 0..40)
        }

        proptest! {
            /// Hedged readers read one body side by side, in any interleaving, opened and closed
            /// at any time, within any limit: each sends a prefix of the request in order (or is
            /// cut with an error once the request outgrew the buffer), the one the call commits
            /// to sends exactly the request, and every byte held is released.
            #[test]
            fn hedged_readers_each_send_the_request_in_order(
                chunks in chunks_strategy(),
                steps in hedge_steps(),
                winner in 0usize..5,
                limit in 0usize..80,
            ) {
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                runtime.block_on(async {
                    let (original, handle, budget) = replay_of(&chunks, limit);
                    handle.enable_hedging();
                    // Live readers and what each has sent.
                    let mut readers = vec![(handle.first_attempt(), Vec::<u8>::new())];
                    for step in steps {
                        match step {
                            HedgeStep::Read(n) if !readers.is_empty() => {
                                let n = n % readers.len();
                                let (body, sent) = &mut readers[n];
                                match body.frame().await {
                                    Some(Ok(frame)) => {
                                        sent.extend_from_slice(&frame.into_data().unwrap());
                                        prop_assert!(original.starts_with(sent), "in order");
                                    }
                                    // Cut: the request outgrew the buffer while it lagged.
                                    Some(Err(_)) => {
                                        prop_assert!(!handle.replayable());
                                        readers.remove(n);
                                    }
                                    None => prop_assert_eq!(&sent[..], &original[..]),
                                }
                            }
                            HedgeStep::Hedge if readers.len() < MAX_READERS => {
                                if let Some(body) = handle.hedge_attempt() {
                                    readers.push((body, Vec::new()));
                                }
                            }
                            HedgeStep::Close(n) if !readers.is_empty() => {
                                let (body, _) = readers.remove(n % readers.len());
                                handle.close_reader(body.generation());
                            }
                            _ => {}
                        }
                    }
                    // Readers cut while they lagged cannot win: the hedged call drops them.
                    let (live, cut): (Vec<_>, Vec<_>) = readers
                        .into_iter()
                        .partition(|(body, _)| handle.is_live(body.generation()));
                    for (mut body, _) in cut {
                        prop_assert!(matches!(body.frame().await, Some(Err(_))), "cut");
                    }
                    let mut readers = live;
                    if !readers.is_empty() {
                        let (mut body, mut sent) = readers.swap_remove(winner % readers.len());
                        handle.commit_to(body.generation());
                        for (loser, _) in &mut readers {
                            prop_assert!(matches!(loser.frame().await, Some(Err(_))), "cut");
                        }
                        while let Some(frame) = body.frame().await {
                            sent.extend_from_slice(&frame.unwrap().into_data().unwrap());
                        }
                        prop_assert_eq!(sent, original);
                        prop_assert_eq!(budget.used(), 0, "committed and read: nothing held");
                    }
                    drop(readers);
                    drop(handle);
                    prop_assert_eq!(budget.used(), 0);
                    Ok(())
                })?;
            }
        }
    }

    /// Wakes count how often they were woken.
    #[derive(Default)]
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The caller's body remembers only the waker of its last poll; every hedged reader waiting
    /// for it must still be woken, or one whose transport stopped polling (a stream out of
    /// window) would stall the one that could go on.
    #[tokio::test]
    async fn every_hedged_reader_waiting_for_the_body_is_woken() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(4);
        let source = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        });
        let handle = ReplayHandle::new(Body::new(StreamBody::new(source)), 1024, budget());
        handle.enable_hedging();
        let mut first = handle.first_attempt();
        let mut hedge = handle.hedge_attempt().unwrap();
        let first_woken = Arc::new(CountingWaker::default());
        let hedge_woken = Arc::new(CountingWaker::default());
        let first_waker = Waker::from(Arc::clone(&first_woken));
        let hedge_waker = Waker::from(Arc::clone(&hedge_woken));
        let poll = |body: &mut ReplayBody, waker: &Waker| {
            Pin::new(body).poll_frame(&mut Context::from_waker(waker))
        };
        assert!(poll(&mut first, &first_waker).is_pending());
        assert!(poll(&mut hedge, &hedge_waker).is_pending());

        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
        assert_eq!(
            first_woken.0.load(Ordering::SeqCst),
            1,
            "not only the last poller"
        );
        assert_eq!(hedge_woken.0.load(Ordering::SeqCst), 1);

        // The hedge reads the chunk from the body; the first reader, behind, from the buffer.
        assert!(matches!(
            poll(&mut hedge, &hedge_waker),
            Poll::Ready(Some(Ok(_)))
        ));
        assert!(matches!(
            poll(&mut first, &first_waker),
            Poll::Ready(Some(Ok(_)))
        ));
        assert!(poll(&mut first, &first_waker).is_pending());
        // A reader that ends wakes the others: it may have been the one the body would wake.
        handle.close_reader(first.generation());
        assert!(matches!(
            poll(&mut first, &first_waker),
            Poll::Ready(Some(Err(_)))
        ));
        drop(tx);
        assert!(matches!(poll(&mut hedge, &hedge_waker), Poll::Ready(None)));
    }

    #[tokio::test]
    async fn the_budget_is_shared_and_released() {
        let budget = Arc::new(BufferBudget::new(5));
        let a = ReplayHandle::new(body_of(&[b"abcd"]), 1024, Arc::clone(&budget));
        read_all(a.next_attempt().unwrap()).await;
        assert_eq!(budget.used(), 4);
        let b = ReplayHandle::new(body_of(&[b"efgh"]), 1024, Arc::clone(&budget));
        assert_eq!(read_all(b.next_attempt().unwrap()).await, b"efgh");
        assert!(!b.replayable(), "no room left in the shared budget");
        a.commit();
        assert_eq!(budget.used(), 0);
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
