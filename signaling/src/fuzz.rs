//! Entry points of the fuzz targets (`fuzz/`) and of the tests that replay their corpus: each
//! takes any bytes and must neither panic nor hang.

use crate::auth::TokenAuthority;
use crate::protocol::{request_id, ClientMessage};
use crate::tasks::Task;

/// The longest error text a refused frame may get: refusals are the server's words, never
/// the client's input.
const MAX_ERROR_TEXT: usize = 512;

/// A WebSocket text frame from a client: parsed as the session does, and read for its `id`
/// as a rate-limited one is. A refusal's text stays short whatever the frame.
pub fn client_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(refused) = ClientMessage::parse(text) {
        assert!(refused.message.len() <= MAX_ERROR_TEXT, "a refusal of {} bytes", refused.message.len());
    }
    let _ = request_id(text);
}

/// A message of the tasks topic.
pub fn task(data: &[u8]) {
    let _ = Task::parse(data);
}

/// An access token as `join` and the HTTP API receive it, checked with a fixed key.
pub fn access_token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let keys = [("fuzz".to_owned(), "a key of at least thirty-two bytes".to_owned())].into_iter().collect();
    let authority = TokenAuthority::new(keys, "fuzz".to_owned());
    let _ = authority.verify(token);
}
