//! gRPC framing for the ADS streams, by hand, so that what a stream holds is bounded.
//!
//! ```text
//! request body --frames--> RequestStream: 5-byte prefix, length checked against the limit,
//!   prost decode; a buffer that grew for a large request is released once drained
//! Outgoing (a wire::Message of shared Bytes, or the closing status) --mpsc-->
//!   ResponseBody: small pieces gathered into frames of up to FRAME bytes, large pieces
//!   passed through as they are; the closing status as trailers
//! ```
//!
//! tonic's generated service would encode every response into a per-stream buffer that
//! keeps the capacity of the largest message it ever sent (the initial full push); with a
//! thousand proxies that buffer alone was 600 MiB. Here a stream owns at most one frame in
//! flight, and resources are encoded once for every stream (`weir_core::ads::wire`).

use bytes::{Buf, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tonic::Status;
use weir_core::ads::wire;

/// Pieces are gathered into chunks of at most this many bytes. h2 queues every chunk a
/// stream hands it in a slot that is kept for the stream's life, so fewer, larger chunks
/// keep that queue small; h2 cuts them into frames of the peer's frame size.
const FRAME: usize = 64 * 1024;
/// A piece at least this large is sent as it is, without copying.
const PASS_THROUGH: usize = 4 * 1024;
/// A request buffer above this capacity is released once drained.
const KEEP_CAPACITY: usize = 16 * 1024;

/// Decodes the gRPC messages of a request body.
pub struct RequestStream<T> {
    body: tonic::body::Body,
    buf: BytesMut,
    max_message: usize,
    _message: std::marker::PhantomData<fn() -> T>,
}

impl<T: prost::Message + Default> RequestStream<T> {
    /// Messages of `body`, each at most `max_message` bytes.
    pub fn new(body: tonic::body::Body, max_message: usize) -> Self {
        RequestStream {
            body,
            buf: BytesMut::new(),
            max_message,
            _message: std::marker::PhantomData,
        }
    }

    /// The next message; `None` when the client closed its side.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        loop {
            if let Some(message) = self.decode()? {
                return Ok(Some(message));
            }
            match self.body.frame().await {
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(Status::invalid_argument(
                        "the request ended inside a message",
                    ))
                }
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    fn decode(&mut self) -> Result<Option<T>, Status> {
        if self.buf.len() < wire::GRPC_PREFIX {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Status::unimplemented(
                "compressed xDS requests are not accepted: turn gRPC compression off",
            ));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max_message {
            return Err(Status::resource_exhausted(format!(
                "a request of {len} bytes exceeds the limit of {} bytes (--xds-max-request-bytes)",
                self.max_message
            )));
        }
        if self.buf.len() < wire::GRPC_PREFIX + len {
            self.buf.reserve(wire::GRPC_PREFIX + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(wire::GRPC_PREFIX);
        let message = T::decode(self.buf.split_to(len).freeze())
            .map_err(|e| Status::invalid_argument(format!("undecodable request: {e}")))?;
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = BytesMut::new();
        }
        Ok(Some(message))
    }
}

/// What a stream's driver hands to its response body.
#[derive(Debug)]
pub enum Outgoing {
    /// One response.
    Message(wire::Message),
    /// The stream ends with this status.
    End(Status),
}

/// A response body fed by a stream's driver.
pub struct ResponseBody {
    rx: mpsc::Receiver<Outgoing>,
    pieces: VecDeque<Bytes>,
    done: bool,
}

impl ResponseBody {
    /// The body of a stream whose driver sends on the other end of `rx`.
    pub fn new(rx: mpsc::Receiver<Outgoing>) -> ResponseBody {
        ResponseBody {
            rx,
            pieces: VecDeque::new(),
            done: false,
        }
    }

    /// The next frame of the current message: a large piece as it is, or small pieces
    /// gathered up to [`FRAME`] bytes.
    fn next_frame(&mut self) -> Option<Bytes> {
        let first = self.pieces.pop_front()?;
        if first.len() >= PASS_THROUGH {
            return Some(first);
        }
        let mut frame = BytesMut::with_capacity(FRAME);
        frame.extend_from_slice(&first);
        while let Some(next) = self.pieces.front() {
            if next.len() >= PASS_THROUGH || frame.len() + next.len() > FRAME {
                break;
            }
            frame.extend_from_slice(next);
            self.pieces.pop_front();
        }
        Some(frame.freeze())
    }
}

fn trailers(status: &Status) -> Frame<Bytes> {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", http::HeaderValue::from_static("13"));
    }
    Frame::trailers(map)
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(frame) = this.next_frame() {
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Outgoing::Message(message))) => {
                this.pieces = message.into();
                // The VecDeque of a large message is released with its last piece.
                match this.next_frame() {
                    Some(frame) => Poll::Ready(Some(Ok(Frame::data(frame)))),
                    None => Poll::Pending,
                }
            }
            Poll::Ready(Some(Outgoing::End(status))) => {
                this.done = true;
                Poll::Ready(Some(Ok(trailers(&status))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(Some(Ok(trailers(&Status::ok("")))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pieces.is_empty()
    }
}

/// Serves a sidecar's report stream (messages of type `M` sent to `method` of `service`):
/// marks its connection, decodes messages of at most `max_message` bytes, and ends the
/// stream with the status `serve` returns. `serve` gets the peer's IP address, the
/// messages, and the sender for any response.
pub fn report_stream<M, F, Fut>(
    request: http::Request<tonic::body::Body>,
    service: &str,
    method: &str,
    max_message: usize,
    serve: F,
) -> http::Response<tonic::body::Body>
where
    M: prost::Message + Default,
    F: FnOnce(Option<String>, RequestStream<M>, mpsc::Sender<Outgoing>) -> Fut,
    Fut: std::future::Future<Output = Status> + Send + 'static,
{
    let called = request.uri().path().rsplit('/').next().unwrap_or_default();
    if called != method {
        return Status::unimplemented(format!("{service} has no method {called:?}")).into_http();
    }
    let source = super::conn::stream_opened(&request);
    let messages = RequestStream::<M>::new(request.into_body(), max_message);
    let (tx, rx) = mpsc::channel(1);
    let served = serve(source, messages, tx.clone());
    tokio::spawn(async move {
        let end = served.await;
        let _ = tx.send(Outgoing::End(end)).await;
    });
    response(ResponseBody::new(rx))
}

/// The response that starts a stream: gRPC headers and `body`.
pub fn response(body: ResponseBody) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_pieces_are_gathered_and_large_ones_pass_as_they_are() {
        let (_tx, rx) = mpsc::channel(1);
        let mut body = ResponseBody::new(rx);
        let big = Bytes::from(vec![1u8; 20_000]);
        body.pieces = [
            Bytes::from_static(b"head"),
            Bytes::from_static(b"a"),
            big.clone(),
        ]
        .into_iter()
        .chain(std::iter::repeat_n(Bytes::from(vec![2u8; 1000]), 20))
        .collect();
        assert_eq!(&body.next_frame().unwrap()[..], b"heada");
        let passed = body.next_frame().unwrap();
        assert_eq!(passed.as_ptr(), big.as_ptr(), "no copy");
        assert_eq!(
            body.next_frame().unwrap().len(),
            20_000,
            "small pieces gathered"
        );
        assert!(body.next_frame().is_none());
    }
}
