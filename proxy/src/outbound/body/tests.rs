use super::*;
use tokio::sync::mpsc;

/// A body whose frames the test sends one by one.
struct Fed(mpsc::UnboundedReceiver<Frame<Bytes>>);

impl Body for Fed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn fed() -> (mpsc::UnboundedSender<Frame<Bytes>>, Fed) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Fed(rx))
}

fn data(s: &'static str) -> Frame<Bytes> {
    Frame::data(Bytes::from_static(s.as_bytes()))
}

/// The next frame as text (`trailers` for trailers), `None` at the end.
async fn next(body: &mut MeshBody) -> Option<Result<String, String>> {
    let frame = body.frame().await?;
    Some(match frame {
        Ok(frame) => Ok(match frame.into_data() {
            Ok(data) => String::from_utf8_lossy(&data).into_owned(),
            Err(_) => "trailers".to_owned(),
        }),
        Err(e) => Err(e.to_string()),
    })
}

async fn rest(body: &mut MeshBody) -> Vec<String> {
    let mut all = Vec::new();
    while let Some(frame) = next(body).await {
        all.push(frame.unwrap());
    }
    all
}

#[tokio::test]
async fn a_retry_replays_the_whole_body_with_its_trailers() {
    let (tx, source) = fed();
    tx.send(data("a")).unwrap();
    tx.send(data("b")).unwrap();
    tx.send(Frame::trailers(HeaderMap::new())).unwrap();
    drop(tx);
    let (mut first, recorder) = MeshBody::recorded(source, None);
    assert_eq!(rest(&mut first).await, ["a", "b", "trailers"]);
    let mut second = recorder.again(None).unwrap();
    assert_eq!(rest(&mut second).await, ["a", "b", "trailers"]);
    assert!(second.is_end_stream());
}

#[tokio::test]
async fn a_retry_replays_what_came_and_then_takes_the_rest_from_the_app() {
    let (tx, source) = fed();
    tx.send(data("a")).unwrap();
    let (mut first, recorder) = MeshBody::recorded(source, None);
    assert_eq!(next(&mut first).await, Some(Ok("a".to_owned())));
    let mut second = recorder.again(None).unwrap();
    // The given-up try stops at once; the new one starts from the beginning.
    assert!(matches!(next(&mut first).await, Some(Err(_))));
    assert_eq!(next(&mut second).await, Some(Ok("a".to_owned())));
    tx.send(data("b")).unwrap();
    drop(tx);
    assert_eq!(rest(&mut second).await, ["b"]);
    let mut third = recorder.again(None).unwrap();
    assert_eq!(rest(&mut third).await, ["a", "b"]);
}

#[tokio::test]
async fn a_body_larger_than_the_limit_goes_through_once_and_is_not_retried() {
    let (tx, source) = fed();
    let big = "x".repeat(REPLAY_LIMIT);
    tx.send(Frame::data(Bytes::from(big))).unwrap();
    tx.send(data("y")).unwrap();
    drop(tx);
    let (mut first, recorder) = MeshBody::recorded(source, None);
    let frames = rest(&mut first).await;
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].len(), REPLAY_LIMIT);
    assert!(recorder.again(None).is_none());
}

#[tokio::test]
async fn an_empty_body_ends_at_once_on_every_try() {
    let (tx, source) = fed();
    drop(tx);
    let (mut first, recorder) = MeshBody::recorded(http_body_util::Empty::<Bytes>::new(), None);
    assert!(first.is_end_stream());
    assert!(next(&mut first).await.is_none());
    let second = recorder.again(None).unwrap();
    assert!(second.is_end_stream());
    // A source that ends without a frame is the same.
    let (mut body, _) = MeshBody::recorded(source, None);
    assert!(next(&mut body).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn activity_either_way_puts_off_the_idle_timeout() {
    let activity = Activity::new();
    let started = tokio::time::Instant::now();
    let (tx, source) = fed();
    let (mut body, _) = MeshBody::recorded(source, Some(activity.clone()));
    let idle = activity.idle_for(Duration::from_secs(10));
    tokio::pin!(idle);
    // A frame at 6 s puts the timeout at 16 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    tx.send(data("a")).unwrap();
    assert!(next(&mut body).await.is_some());
    idle.as_mut().await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(16) && waited < Duration::from_secs(17),
        "{waited:?}"
    );
}
