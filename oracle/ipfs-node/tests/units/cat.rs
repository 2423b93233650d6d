//! `/api/v0/cat`'s `offset`/`length` window over the streamed pieces (src/cat.rs).

use bytes::Bytes;
use futures::{stream, StreamExt};
use healthsense_ipfs_node::internals::window;

async fn windowed(offset: u64, length: Option<u64>) -> Vec<u8> {
    let pieces = ["hello ", "wor", "ld"].map(|s| Ok::<_, ()>(Bytes::from_static(s.as_bytes())));
    let out: Vec<Result<Bytes, ()>> = window(stream::iter(pieces), offset, length).collect().await;
    out.into_iter().flatten().flatten().collect()
}

#[tokio::test]
async fn offset_and_length_cut_across_pieces() {
    assert_eq!(windowed(0, None).await, b"hello world");
    assert_eq!(windowed(4, Some(4)).await, b"o wo");
    assert_eq!(windowed(9, None).await, b"ld");
    assert_eq!(windowed(0, Some(0)).await, b"");
    assert_eq!(windowed(100, None).await, b"");
}
